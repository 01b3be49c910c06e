"""Time the README's main command on the embedded tiny model, on 2 CPU cores (issue #8: under a minute).

    python benchmarks/bench_tiny_cpu.py            # prints the seconds; exit code 1 if >= 60 s

Runs `python -m llm_dit.cli predict --config configs/refiner_skip.yaml` in a fresh
process pinned to 2 cores (taskset where available, and 2 intra-op threads),
writing into a temporary folder so a previous run's results are not resumed.
The time is the whole command as a user sees it: interpreter start, imports,
model build, the study, metrics, the writer.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 60.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/refiner_skip.yaml")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()

    env = dict(os.environ, OMP_NUM_THREADS=str(args.cores), MKL_NUM_THREADS=str(args.cores),
               TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "llm_dit.cli", "predict", "--config", args.config]
    if shutil.which("taskset") and hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) >= args.cores:
        cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[: args.cores])
        command = ["taskset", "-c", cores, *command]
    with tempfile.TemporaryDirectory() as root:
        command += ["--trainer.default_root_dir", root]
        began = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - began
        images = len(list(Path(root).glob("lightning_logs/*/images/**/*.png")))
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
        print(f"FAILED after {seconds:.1f} s (exit {result.returncode})")
        return 1
    print(f"{' '.join(command[:-2])}: {seconds:.1f} s on {args.cores} CPU cores, {images} images "
          f"({'under' if seconds < LIMIT_S else 'OVER'} the {LIMIT_S:.0f} s budget)")
    return 0 if seconds < LIMIT_S else 1


if __name__ == "__main__":
    sys.exit(main())
