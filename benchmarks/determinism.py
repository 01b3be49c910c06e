"""Measure what moves an image's pixels on CPU: thread count, batch composition, resume.

    python benchmarks/determinism.py [--out /tmp/determinism]

Runs one small study (tiny model) under each setting into its own folder and compares
every PNG with the reference run (1 thread, batch 4): how many images differ, and the
largest difference in 8-bit levels. Results go to benchmarks/NOTES.md by hand.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from callbacks.writer import StudyWriter
from llm_dit.data import StudyDataModule
from llm_dit.module import ZImageModule
from llm_dit.study import Study


def study() -> Study:
    return Study(name="determinism", prompts=["A cat on a couch", "A red circle", "Neon city at night"],
                 seeds=[1, 2, 3, 4], variables={"sampler.shift": [2.0, 3.0]},
                 sampler={"steps": 4, "height": 64, "width": 64})


def run(root: Path, threads: int, batch_size: int) -> Path:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        trainer = L.Trainer(accelerator="cpu", devices=1, default_root_dir=root, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=[StudyWriter()],
                            logger=TensorBoardLogger(root, name="lightning_logs", version="determinism"))
        trainer.predict(ZImageModule(weights="tiny"), datamodule=StudyDataModule(study(), batch_size=batch_size),
                        return_predictions=False)
    finally:
        torch.set_num_threads(previous)
    return root / "lightning_logs" / "determinism"


def compare(reference: Path, other: Path) -> tuple[int, int, int]:
    """(images, images that differ, largest difference in 8-bit levels)."""
    names = sorted(p.relative_to(reference) for p in reference.glob("images/*/*.png"))
    differ, largest = 0, 0
    for name in names:
        a = np.asarray(Image.open(reference / name), dtype=np.int16)
        b = np.asarray(Image.open(other / name), dtype=np.int16)
        diff = int(np.abs(a - b).max())
        differ += diff > 0
        largest = max(largest, diff)
    return len(names), differ, largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/llm_dit_determinism")
    out = Path(parser.parse_args().out)
    shutil.rmtree(out, ignore_errors=True)
    reference = run(out / "t1_b4", threads=1, batch_size=4)
    variants = {"threads 2, batch 4": (2, 4), "threads 4, batch 4": (4, 4), "threads 1, batch 1": (1, 1),
                "threads 1, batch 2": (1, 2), "threads 1, batch 3": (1, 3)}
    print("| setting (vs 1 thread, batch 4) | images | differ | max diff (8-bit levels) |")
    print("| --- | --- | --- | --- |")
    for label, (threads, batch) in variants.items():
        folder = run(out / label.replace(", ", "_").replace(" ", ""), threads, batch)
        print(f"| {label} | {' | '.join(str(v) for v in compare(reference, folder))} |", flush=True)
    # resume: delete one image of a later condition and run again in the same folder
    resumed = out / "resumed"
    shutil.copytree(out / "t1_b4", resumed)
    (resumed / "lightning_logs" / "determinism" / "images" / "shift=3.0" / "p001_s3.png").unlink()
    folder = run(resumed, threads=1, batch_size=4)
    print(f"| resumed (one image deleted, made again with its batch) | {' | '.join(str(v) for v in compare(reference, folder))} |")


if __name__ == "__main__":
    main()
