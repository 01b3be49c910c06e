#!/usr/bin/env bash
# Issue #10 on a multi-GPU machine: the same study on 1 GPU and on N GPUs, then the comparison.
#   bash benchmarks/scaling.sh N OUTDIR
set -euo pipefail
gpus=${1:-2}; out=${2:-scaling_out}
mkdir -p "$out"
run() {  # run <devices> <root>
  local start end
  start=$(date +%s.%N)
  python3 -m llm_dit.cli predict --config benchmarks/scaling.yaml --trainer.devices "$1" \
      --trainer.strategy "$([ "$1" -gt 1 ] && echo ddp || echo auto)" --trainer.default_root_dir "$2" \
      > "$2.log" 2>&1 || { tail -40 "$2.log"; exit 1; }
  end=$(date +%s.%N)
  python3 -c "print(round($end - $start, 2))"
}
mkdir -p "$out/one" "$out/many"
wall1=$(run 1 "$out/one")
wallN=$(run "$gpus" "$out/many")
python3 benchmarks/scaling_report.py "$out/one/lightning_logs/scaling" "$out/many/lightning_logs/scaling" \
    --gpus "$gpus" --wall1 "$wall1" --wallN "$wallN" --out "$out/scaling.json"
