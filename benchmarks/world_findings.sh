#!/usr/bin/env bash
# Every study of configs/ on the embedded model, on CPU, then the README's findings table.
#
#   bash benchmarks/world_findings.sh OUT_FOLDER
#
# Writes, under OUT_FOLDER (created; run from any folder, nothing is written elsewhere):
#   lightning_logs/<study>/            each study's run folder (images, results.jsonl, report.md)
#   lightning_logs/refiner_style_adapter/adapter   the style adapter `fit` trains (Q3.4), used by
#                                      refiner_style_adapter_predict.yaml
#   findings.md, grids/<study>.png     the table (python -m llm_dit.report.findings), links relative to OUT
#   docs/findings/ of this checkout    with README=1: the same table with grid links from the checkout's
#                                      root, for the README section "What the studies find on the
#                                      embedded model" (paste docs/findings/findings.md there)
#   timings.tsv                        seconds per step of this script
#
# Weights: the default `tiny` (the trained embedded model once it ships). WEIGHTS=tiny-random (or a
# diffusers folder) overrides it; EXTRA adds arguments to every predict, e.g. a quick check of the
# whole chain: EXTRA="--data.init_args.max_prompts 2 --data.init_args.max_seeds 1".
#
# Expected wall time on 2 CPU cores: ~30 min at the configs' full sizes with a model of the trained
# one's shape (DiT dim 192, 6 + 2 + 2 layers, 64 image tokens: ~0.2 s per 8-step image; the README's
# first command, 200 images, took 47 s). Per study, from the sizes in each config's header:
# baseline 40 images (~15 s), refiner_skip 200 (~50 s), refiner_layerwise 300 (~75 s), refiner_depth 500
# (~2 min), hidden_layer 800 (~3 min), token_importance 800 (~3 min), system_prompt 600 (~3 min),
# think_block 800 (~4 min), shift_steps 1120 (~5 min), long_prompt 80 at 1024 caption tokens (~4 min),
# style adapter fit (~1 min) + predict 176 (~1 min), world style adapter fit (~5 min, 300 steps) +
# predict 160 (~1 min). Re-running resumes every finished image.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: bash benchmarks/world_findings.sh OUT_FOLDER" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"
WEIGHTS="${WEIGHTS:-tiny}"
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
STUDIES=(baseline refiner_skip refiner_layerwise refiner_depth hidden_layer token_importance system_prompt
         think_block shift_steps long_prompt)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's packages, from OUT as the working folder
cd "$OUT"  # run folders, the synthetic style data and the adapter are written relative to here
printf 'step\tseconds\n' > timings.tsv

timed() {  # timed NAME COMMAND...: run it, append its wall time to timings.tsv
    local name="$1" start
    shift
    start=$(date +%s%N)
    "$@"
    awk -v name="$name" -v ns="$(( $(date +%s%N) - start ))" 'BEGIN { printf "%s\t%.1f\n", name, ns / 1e9 }' >> timings.tsv
}

predict() {  # predict STUDY: the shipped config on CPU with the chosen weights, then its report
    timed "$1" python -m llm_dit.cli predict --config "$ROOT/configs/$1.yaml" --model.weights "$WEIGHTS" \
        --trainer.accelerator cpu --trainer.enable_progress_bar false "${EXTRA_ARGS[@]}"
    timed "$1 report" python -m llm_dit.cli report "lightning_logs/$1"
}

for study in "${STUDIES[@]}"; do
    predict "$study"
done
# Q3.4: the style adapter is trained on these weights first, then applied (the predict refuses another base).
timed "refiner_style_adapter fit" python -m llm_dit.cli fit --config "$ROOT/configs/refiner_style_adapter.yaml" \
    --model.weights "$WEIGHTS" --trainer.accelerator cpu --trainer.enable_progress_bar false
predict refiner_style_adapter_predict
# Issue 18's style adapter on the world: striped fills learned by the refiner adapter (world_fill_striped).
timed "world_style_adapter fit" env OMP_NUM_THREADS=1 python -m llm_dit.cli fit --config "$ROOT/configs/world_style_adapter.yaml" \
    --model.weights "$WEIGHTS" --trainer.accelerator cpu --trainer.enable_progress_bar false
predict world_style_adapter_predict

RUNS=()
for study in "${STUDIES[@]}" refiner_style_adapter_predict world_style_adapter_predict; do
    RUNS+=("lightning_logs/$study")
done
timed findings python -m llm_dit.report.findings "${RUNS[@]}" --out findings.md
if [[ "${README:-0}" == 1 ]]; then
    python -m llm_dit.report.findings "${RUNS[@]/#/$OUT/}" --out "$ROOT/docs/findings/findings.md" --links-relative-to "$ROOT"
fi
column -t -s $'\t' timings.tsv
echo "findings: $OUT/findings.md (README=1 also writes $ROOT/docs/findings/ for README.md's findings section)"
