"""Run a Python module or script the way `python -m ...` / `python script.py` would, and record its memory.

    python benchmarks/measured_launch.py --record R.json [--cap-gib 16] -m llm_dit.cli predict ...
    python benchmarks/measured_launch.py --record R.json benchmarks/diffusers_study_loop.py ...

Why a launcher rather than code in each side: bench_study_cli.py times both sides of its comparison
as a user runs them, so neither side may carry benchmark code. The launcher adds only what the
harness must read back, identically for both: an optional cap on CUDA memory
(`torch.cuda.set_per_process_memory_fraction`, the issue's way to stand in for a 12 or 16 GiB card)
and, at exit, the peak CUDA memory allocated and reserved plus the process's peak resident memory.
torch is imported only when CUDA is asked about, after the cap has to be set, so the launcher adds
no import time to a side that would not import torch anyway.
"""

from __future__ import annotations

import argparse
import atexit
import json
import resource
import runpy
import sys
import time
from pathlib import Path

GIB = 1024 ** 3


def cap_cuda_memory(cap_gib: float) -> dict:
    """Cap this process's CUDA caching allocator at `cap_gib` of device 0; a no-op without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return {"cap_gib": cap_gib, "applied": False}
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * GIB / total), 0)
    return {"cap_gib": cap_gib, "applied": True, "device_total_gib": round(total / GIB, 2)}


def peak_memory() -> dict:
    """Peak CUDA memory of this process (when torch was imported and CUDA used) and peak RSS, in GiB."""
    peaks = {"max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peaks["cuda_max_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
        peaks["cuda_max_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 3)
    return peaks


def split_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The launcher's own options, then the target (`-m MODULE` or a script) and its arguments, untouched.

    The launcher's options end at `-m` or at the first plain word, as Python's own do: a target's
    `--help` or `-m` (pytest's markers) is the target's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", type=Path, required=True, help="JSON file written at exit")
    parser.add_argument("--cap-gib", type=float, default=None, help="cap CUDA memory at this many GiB")
    own, index = [], 0
    while index < len(argv) and argv[index] in ("--record", "--cap-gib", "-h", "--help"):
        own += argv[index:index + 2] if argv[index] in ("--record", "--cap-gib") else argv[index:index + 1]
        index += 2 if argv[index] in ("--record", "--cap-gib") else 1
    known = parser.parse_args(own)
    known.module = None
    target = argv[index:]
    if target[:1] == ["-m"] and len(target) >= 2:
        known.module, target = target[1], target[2:]
    elif not target or target[0].startswith("-"):
        parser.error("give -m MODULE or a script path, then its arguments")
    return known, target


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    known, rest = split_arguments(argv)
    record: dict = {"started_unix": time.time(), "argv": argv}
    if known.cap_gib is not None:
        record["cap"] = cap_cuda_memory(known.cap_gib)

    def write_record() -> None:
        record.update(peak_memory(), ended_unix=time.time())
        known.record.parent.mkdir(parents=True, exist_ok=True)
        known.record.write_text(json.dumps(record, indent=1) + "\n")

    atexit.register(write_record)
    if known.module is not None:
        sys.argv = [known.module, *rest]
        sys.path[0] = str(Path.cwd())  # as `python -m` does: the working directory, not the launcher's folder
        runpy.run_module(known.module, run_name="__main__", alter_sys=True)
    else:
        script, *args = rest
        sys.argv = [script, *args]
        sys.path[0] = str(Path(script).resolve().parent)  # as `python script.py` does
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
