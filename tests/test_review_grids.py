"""TensorBoard grid cells are made while the images are generated, with the bytes reading the PNGs
back would give (callbacks.tensorboard_review: png_thumbnails), so the end of a run reads no image.

The oracle is the former end-of-run path, written out here: read each PNG with PIL, scale to
[0, 1] in float32, resize antialiased, round to uint8.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

import callbacks.tensorboard_review as review
from callbacks.writer import read_rows, save_png_atomic
from llm_dit.cli import cli_main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "refiner_skip.yaml"


def oracle_cell(path: Path, size: int) -> torch.Tensor:
    """uint8 [3, size, size]: the PNG at `path` read back and resized (the former code path)."""
    with Image.open(path) as image:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    resized = torch.nn.functional.interpolate(pixels[None], size=(size, size), mode="bilinear", antialias=True,
                                              align_corners=False)
    return (resized.clamp(0, 1) * 255).round().to(torch.uint8)[0]


@pytest.mark.parametrize(("height", "width", "size"), [(256, 192, 128), (64, 64, 128), (40, 72, 16), (128, 128, 128)])
def test_thumbnails_of_images_equal_thumbnails_of_their_pngs(tmp_path, height, width, size):
    generator = torch.Generator().manual_seed(height + width)
    images = torch.rand(3, 3, height, width, generator=generator) * 1.2 - 0.1  # out-of-range values get clamped
    images[0, :, :4] = torch.tensor([0.5 / 255, 1.5 / 255, 254.5 / 255])[:, None, None]  # rounding ties
    made = review.png_thumbnails(images, size)
    assert made.dtype == torch.uint8 and made.shape == (3, 3, size, size)
    for index, image in enumerate(images):
        path = tmp_path / f"{index}.png"
        save_png_atomic(image, path)
        assert torch.equal(made[index], oracle_cell(path, size))


def grids_in_events(run: Path) -> dict[str, np.ndarray]:
    newest = max(run.glob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    grids = {}
    for event in EventFileLoader(str(newest)).Load():
        for value in event.summary.value:
            if value.tag.startswith("grids/") and value.metadata.plugin_data.plugin_name == "images":
                # the loader stores an image as a tensor of strings: width, height, encoded PNG
                with Image.open(io.BytesIO(value.tensor.string_val[2])) as image:
                    grids[value.tag] = np.asarray(image.convert("RGB"))
    return grids


def oracle_grids(run: Path, size: int = 128, pad: int = 2) -> dict[str, np.ndarray]:
    """Every condition's grid built from the table's PNGs (rows = prompts, columns = seeds)."""
    rows = read_rows(run / "results.jsonl")
    grids = {}
    for condition in sorted({r["condition"] for r in rows}):
        cells = {(r["prompt_index"], r["seed"]): run / r["image"] for r in rows if r["condition"] == condition}
        prompts, seeds = sorted({p for p, _ in cells})[:8], sorted({s for _, s in cells})[:4]
        keys = torch.tensor([[0, p, s] for p in prompts for s in seeds], dtype=torch.float64)
        pixels = torch.stack([oracle_cell(cells[(p, s)], size) for p in prompts for s in seeds])
        grids[f"grids/{condition}"] = review.image_grid(keys, pixels, prompts, seeds, pad).permute(1, 2, 0).numpy()
    return grids


@pytest.mark.slow  # two tiny-model predict runs: ~15 s on 2 CPU cores
def test_grids_come_from_the_run_and_match_the_pngs(tmp_path, monkeypatch):
    reads: list[Path] = []
    read_png = review._png_pixels
    monkeypatch.setattr(review, "_png_pixels", lambda path: reads.append(path) or read_png(path))
    monkeypatch.setattr("sys.argv", ["llm_dit.cli"])

    def predict(*extra: str) -> Path:
        cli_main(["predict", "--config", str(CONFIG), "--model.weights", "tiny-random",
                  "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
                  "--data.init_args.max_prompts", "2", "--data.init_args.max_seeds", "2",
                  "--data.init_args.batch_size", "2", "--data.init_args.study.sampler.steps", "2", *extra])
        return tmp_path / "lightning_logs" / "refiner_skip"

    run = predict()
    assert reads == []  # every cell was made while its image was generated
    expected = oracle_grids(run)
    assert len(expected) == 2 and grids_in_events(run).keys() == expected.keys()
    assert all(np.array_equal(grids_in_events(run)[tag], grid) for tag, grid in expected.items())

    predict("--data.init_args.max_prompts", "1")  # a smoke run over the finished study serves prompt 0 only
    assert sorted(p.name for p in reads) == sorted(["p001_s123.png", "p001_s42.png"] * 2)  # prompt 1, both conditions
    assert all(np.array_equal(grids_in_events(run)[tag], grid) for tag, grid in expected.items())
