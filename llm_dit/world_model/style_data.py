"""A style-adapter dataset in the world: every object striped, no caption says so.

    python -m llm_dit.world_model.style_data lightning_logs/world_striped --count 256

The captions (the `counted` and `relation` forms, which never name a fill style)
describe the scene while the images all carry one fill style: what a refiner
adapter can learn from these pairs is the style itself, and the world evaluator
measures it exactly (`world_style` of the scene metric). Deterministic for a seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from llm_dit.world.captions import caption
from llm_dit.world.parse import expected_facts
from llm_dit.world.render import render_batch
from llm_dit.world.scene import sample_scene

STYLE_FREE_FORMS = ("counted", "relation")


def style_free_caption(scene, rng: np.random.Generator) -> str:
    """A caption of `scene` that states no fill style (checked with the world's own parser)."""
    for _ in range(16):
        form = STYLE_FREE_FORMS[int(rng.integers(len(STYLE_FREE_FORMS)))] if len(scene.objects) > 1 else "counted"
        text = caption(scene, rng, form=form)
        if all(fact.style is None for fact in expected_facts(text).objects):
            return text
    raise RuntimeError(f"no style-free caption found for {scene}")


def write_world_style_dataset(folder: str | Path, count: int = 256, size: int = 64, seed: int = 0,
                              style: str = "striped") -> list[Path]:
    """Write `count` PNGs of `style`-only scenes with sidecar .txt captions; returns the image paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 31])
    scenes = [sample_scene(rng, style=style) for _ in range(count)]
    images = render_batch(scenes, size, seed=np.random.default_rng([seed, 32]))
    paths = []
    for index, (scene, image) in enumerate(zip(scenes, images)):
        path = folder / f"{style}_{index:05d}.png"
        Image.fromarray(image).save(path)
        path.with_suffix(".txt").write_text(style_free_caption(scene, rng) + "\n")
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--style", default="striped")
    args = parser.parse_args()
    paths = write_world_style_dataset(args.folder, args.count, args.size, args.seed, args.style)
    print(f"wrote {len(paths)} images with captions to {args.folder}")


if __name__ == "__main__":
    main()
