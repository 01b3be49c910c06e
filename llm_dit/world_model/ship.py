"""Ship a trained world-model export as the embedded `tiny` model, with its checksums and a reference score.

    python -m llm_dit.world_model.ship lightning_logs/world_model/export

Copies the three exported models into `llm_dit/models/embedded/tiny/` in diffusers' folder
layout (transformer/, text_encoder/, vae/, scheduler/; the tokenizer is the bundled Qwen3 one),
writes `checksums.json` (sha256 of every file) and `reference.json`: what the shipped weights
score on a fixed set of held-out prompts and seeds on the CPU. `tests/test_embedded_model.py`
checks both, so a changed file or a changed generation path cannot go unnoticed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from llm_dit.models.config import EMBEDDED_ROOT, TINY
from llm_dit.models.loading import load_diffusers_folder
from llm_dit.models.saving import write_model_index
from llm_dit.models.tiny import ZIMAGE_SCHEDULER_CONFIG
from llm_dit.world_model.evaluate import bar_scores

PARTS = ("transformer", "text_encoder", "vae")
"""The exported models' folders (their classes: llm_dit.models.saving.MODEL_INDEX)."""
REFERENCE_PROMPTS = 8
"""Held-out prompts per kind (one object, colour binding) in the reference score: small enough for a test on 2 cores."""
MAX_FILE_BYTES = 16 * 2**20


def file_checksums(folder: Path) -> dict[str, str]:
    """sha256 of every weight and config file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in (".json", ".safetensors")
            and p.name not in ("checksums.json", "reference.json")}


def reference_scores(folder: Path, prompts_per_kind: int = REFERENCE_PROMPTS) -> dict:
    """Per image: the prompt, its seed and whether every fact holds; CPU, float32, 8 steps, shift 3."""
    components = load_diffusers_folder(str(folder), dtype=torch.float32)
    images = []
    for kind in ("one_object", "colour_binding"):
        prompts, scores = bar_scores(components, kind, prompts_per_kind)
        images += [{"kind": kind, "prompt": p, "seed": seed, "all_hold": bool(score.all_hold), "facts": score.fraction}
                   for seed, (p, score) in enumerate(zip(prompts, scores))]
    return {"sampler": {"steps": 8, "shift": 3.0, "guidance_scale": 0.0, "size": 64, "dtype": "float32", "device": "cpu"},
            "all_hold_mean": sum(i["all_hold"] for i in images) / len(images), "images": images}


def ship(export: Path, destination: Path = EMBEDDED_ROOT / TINY) -> dict:
    """Copy `export` (the training's diffusers-layout export) to `destination` and write its records."""
    files_of = {part: sorted((export / part).glob("*.json")) + sorted((export / part).glob("*.safetensors")) for part in PARTS}
    for part, files in files_of.items():
        if not any(f.suffix == ".safetensors" for f in files):
            raise FileNotFoundError(f"{export / part} has no safetensors: train that stage first")
        too_big = [f.name for f in files if f.stat().st_size > MAX_FILE_BYTES]
        if too_big:
            raise ValueError(f"{part}: {too_big} over 16 MiB; shard it (save_pretrained(max_shard_size=...))")
    if destination.exists():
        shutil.rmtree(destination)
    for part, files in files_of.items():
        (destination / part).mkdir(parents=True)
        for f in files:
            shutil.copyfile(f, destination / part / f.name)  # not the export's read-only modes
    FlowMatchEulerDiscreteScheduler(**ZIMAGE_SCHEDULER_CONFIG).save_config(destination / "scheduler")
    write_model_index(destination)
    (destination / "checksums.json").write_text(json.dumps(file_checksums(destination), indent=1) + "\n")
    reference = reference_scores(destination, REFERENCE_PROMPTS)
    (destination / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    return reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path, help="the training's export folder (transformer/, text_encoder/, vae/)")
    parser.add_argument("--destination", type=Path, default=EMBEDDED_ROOT / TINY)
    args = parser.parse_args()
    reference = ship(args.export, args.destination)
    print(f"shipped to {args.destination}; reference: every fact holds in {reference['all_hold_mean']:.2f} of "
          f"{len(reference['images'])} images")


if __name__ == "__main__":
    main()
