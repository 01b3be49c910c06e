#!/usr/bin/env bash
# Probe the DiT training variants (benchmarks/world_dit_probe.py), then train a DiT piece with the one
# whose loss fell furthest. Needs lightning_logs/world_model/export/{vae,text_encoder} (carried).
#   bash benchmarks/world_probe_then_train.sh DIT_MIN STEPS VARIANTS
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 benchmarks/world_dit_probe.py lightning_logs/world_model --steps "$2" --variants "$3" 2>&1 \
  | grep -v -e Warning -e "warn(" -e "kept in float32" | tee "$OUT/probe.txt"
flags=$(python3 - "$OUT/probe.txt" <<'PY'
import json, sys
sys.path.insert(0, "benchmarks")
from world_dit_probe import VARIANTS
results = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
best = min(results, key=lambda name: results[name]["last100_loss"])
v = VARIANTS[best]
print(f"--static_caption_width {str(v['static']).lower()} --compile {str(v['compiled']).lower()} "
      f"--recipe.dit.learning_rate {v['lr']} --recipe.dit.beta2 {v.get('beta2', 0.99)} --recipe.dit.gradient_clip {v.get('clip', 1.0)}")
PY
)
echo "chosen: $flags" | tee -a "$OUT/probe.txt"
bash benchmarks/world_train_device.sh dit "$1" $flags
