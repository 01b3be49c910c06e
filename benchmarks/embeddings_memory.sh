#!/usr/bin/env bash
# Issue 21: peak GPU memory of the 1024² study when it generates from saved embeddings, beside the
# same study encoding live (full-size Z-Image-Turbo architecture, random bf16 weights, batch 4).
#   bash benchmarks/embeddings_memory.sh OUTDIR [extra predict/encode options]
# Writes OUTDIR/embeddings_memory.json: peak allocated MiB per run (max over batches, from each run's
# results.jsonl), wall seconds per command, and how many images the two runs share bit for bit.
set -euo pipefail
out=${1:-embeddings_memory}; shift || true
mkdir -p "$out"
common=(--config benchmarks/scaling.yaml --data.init_args.max_prompts 4 --data.init_args.study.seeds "[42, 123]" "$@")
timed() {  # timed NAME command...: wall seconds of the command into $out/NAME.seconds
  local start; start=$(date +%s.%N)
  "${@:2}" > "$out/$1.log" 2>&1 || { tail -40 "$out/$1.log"; exit 1; }
  python3 -c "print(round($(date +%s.%N) - $start, 2))" > "$out/$1.seconds"
}
timed live python3 -m llm_dit.cli predict "${common[@]}" --trainer.default_root_dir "$out/live"
timed encode python3 -m llm_dit.cli encode "${common[@]}" --out "$out/emb"
timed saved python3 -m llm_dit.cli predict "${common[@]}" --model.embeddings "$out/emb" --trainer.default_root_dir "$out/saved"
python3 - "$out" <<'PY'
import hashlib, json, sys
from pathlib import Path

out = Path(sys.argv[1])
summary = {}
digests = {}
for name in ("live", "saved"):
    rows = [json.loads(line) for line in next((out / name).rglob("results.jsonl")).read_text().splitlines() if line.strip()]
    peaks = [r["peak_memory_mb"] for r in rows if r.get("peak_memory_mb") is not None]
    summary[name] = {"images": len(rows), "peak_memory_mb": max(peaks) if peaks else None,
                     "wall_s": float((out / f"{name}.seconds").read_text())}
    digests[name] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / name).rglob("*.png") if "grid" not in p.name}
summary["encode_wall_s"] = float((out / "encode.seconds").read_text())
shared = set(digests["live"]) & set(digests["saved"])
summary["identical_images"] = f"{sum(digests['live'][n] == digests['saved'][n] for n in shared)}/{len(shared)}"
(out / "embeddings_memory.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
PY
