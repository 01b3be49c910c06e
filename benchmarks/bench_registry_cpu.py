"""CPU-time check that routing every model change through surgery's registry costs nothing measurable.

    python benchmarks/bench_registry_cpu.py     # prints process CPU seconds for 36 generate() calls

Runs `ZImageModule.generate` on the tiny random model, one thread, for 12 items (2 prompts x 2 seeds x
{control, skip, duplicate}) three times, with refiner drift probes and the refiner cache on: surgery swaps,
probe hooks, the cache, the encoder's truncation (all registry changes since issue 19) on every call.
Run it from two checkouts to compare them (the current directory's packages are imported).
Process CPU time, not wall time: the shared VM's load moves wall time by +-40 %.
"""

from __future__ import annotations

import time

import torch

from llm_dit.module import ZImageModule
from llm_dit.study import Study


def main() -> None:
    torch.set_num_threads(1)
    study = Study(prompts=["a red circle at the top left", "a blue square"], seeds=[0, 1],
                  conditions=[{"name": "skip", "surgery": [{"variant": "skip"}]},
                              {"name": "dup", "surgery": [{"variant": "duplicate"}]}],
                  sampler={"steps": 8, "height": 64, "width": 64})
    module = ZImageModule(weights="tiny-random", record_refiner_drift=True)
    module.configure_model()
    items = study.items()
    module.generate(items[:1])  # warm-up
    began = time.process_time()
    for _ in range(3):
        for item in items:
            module.generate([item])
    print(f"{time.process_time() - began:.3f} s CPU for {3 * len(items)} generate() calls")


if __name__ == "__main__":
    main()
