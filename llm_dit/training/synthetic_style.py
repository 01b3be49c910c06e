"""A tiny synthetic style dataset: shapes on diagonal stripes in one fixed palette.

    python -m llm_dit.training.synthetic_style data/stripes --count 16 --size 64

The "style" (teal/cream stripes, coral and mustard shapes) is shared by every
image while the subject (shape, place, size) varies and is named in the
caption, so a refiner adapter has something to learn that the captions don't
say. Deterministic for a seed; used by the tests and by
configs/refiner_style_adapter.yaml (which creates it when the folder is missing).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PALETTE = {"teal": (11, 60, 73), "cream": (247, 243, 227), "coral": (255, 111, 89), "mustard": (242, 193, 78)}
SHAPES = ("circle", "square", "triangle", "diamond")
STYLE_WORDS = "in the zstripe style"


def striped_background(size: int, period: int) -> Image.Image:
    """Diagonal teal/cream stripes, `period` pixels wide."""
    y, x = np.mgrid[0:size, 0:size]
    stripes = ((x + y) // period) % 2 == 0
    pixels = np.where(stripes[..., None], PALETTE["teal"], PALETTE["cream"]).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def draw_shape(image: Image.Image, shape: str, color: str, center: tuple[int, int], radius: int) -> None:
    cx, cy = center
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    draw = ImageDraw.Draw(image)
    fill = PALETTE[color]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)], fill=fill)
    else:
        draw.polygon([(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)], fill=fill)


def make_example(rng: random.Random, size: int) -> tuple[Image.Image, str]:
    """One image and its caption (the caption names the subject and the style)."""
    image = striped_background(size, period=max(2, size // 8))
    shape, color = rng.choice(SHAPES), rng.choice(("coral", "mustard"))
    radius = rng.randint(size // 6, size // 3)
    center = (rng.randint(radius, size - radius), rng.randint(radius, size - radius))
    draw_shape(image, shape, color, center, radius)
    return image, f"a {color} {shape} {STYLE_WORDS}"


def write_synthetic_style(folder: str | Path, count: int = 16, size: int = 64, seed: int = 0) -> list[Path]:
    """Write `count` PNGs with sidecar .txt captions into `folder`; returns the image paths."""
    if count < 1 or size < 16:
        raise ValueError(f"need count >= 1 and size >= 16, got count={count}, size={size}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for index in range(count):
        image, caption = make_example(rng, size)
        path = folder / f"style_{index:03d}.png"
        image.save(path)
        path.with_suffix(".txt").write_text(caption + "\n")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llm_dit.training.synthetic_style", description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="where to write the images and captions")
    parser.add_argument("--count", type=int, default=16, help="number of images (default 16)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    options = parser.parse_args(argv)
    paths = write_synthetic_style(options.folder, options.count, options.size, options.seed)
    print(f"wrote {len(paths)} images with captions to {options.folder}")


if __name__ == "__main__":
    main()
