#!/usr/bin/env bash
# Probe DiT training variants side by side (benchmarks/world_dit_probe.py, one process per variant on
# the one GPU), then train a Lightning DiT piece with the stable variant whose loss fell furthest.
# Needs lightning_logs/world_model/export/{vae,text_encoder} (carried) and the wheels in .whl/.
#   bash benchmarks/world_probe_then_train.sh DIT_MIN STEPS VARIANTS [more train.py options]
set -euo pipefail
[ -d /tmp/site/diffusers ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
quiet() { grep -v -e Warning -e "warn(" -e "kept in float32" -e "^W1" -e "it/s]" || true; }
root=lightning_logs/world_model
python3 benchmarks/world_dit_probe.py $root --build_only 2>&1 | quiet
IFS=, read -ra names <<< "$3"
for name in "${names[@]}"; do
  python3 benchmarks/world_dit_probe.py $root --steps "$2" --variants "$name" --out "$root/probe_$name.json" 2>&1 | quiet > "$root/probe_$name.log" &
done
wait
cat $root/probe_*.log | tee "$OUT/probe.txt"
flags=$(python3 - $root/probe_*.json <<'PY'
import json, sys
sys.path.insert(0, "benchmarks")
from world_dit_probe import stage_flags
results = {}
for path in sys.argv[1:]:
    results.update(json.load(open(path)))
candidates = [name for name in results if results[name]["stable"]] or list(results)
best = min(candidates, key=lambda name: results[name]["last200_loss"])
print(stage_flags(best))
PY
)
echo "chosen: $flags" | tee -a "$OUT/probe.txt"
bash benchmarks/world_train_device.sh dit "$1" $flags "${@:4}"
