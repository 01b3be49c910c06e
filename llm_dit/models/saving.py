"""Write Z-Image components as a diffusers-format folder that `ZImagePipeline.from_pretrained` loads.

One writer for every place that makes such a folder (the shipped `tiny`, tests' checkpoints, the
benchmark's full-size random weights), so they all carry the same `model_index.json`: a folder
that llm-dit loads but diffusers' own pipeline does not would make the benchmark's baseline fail.
"""

from __future__ import annotations

import json
from pathlib import Path

from llm_dit.models.components import ZImageComponents

MODEL_INDEX = {
    "_class_name": "ZImagePipeline",
    "transformer": ["diffusers", "ZImageTransformer2DModel"],
    "text_encoder": ["transformers", "Qwen3Model"],
    "vae": ["diffusers", "AutoencoderKL"],
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "tokenizer": ["transformers", "Qwen2Tokenizer"],
}
"""ZImagePipeline's components and the library and class each loads with (Z-Image-Turbo's layout)."""


def write_model_index(folder: Path) -> Path:
    """`model_index.json`: what tells `DiffusionPipeline.from_pretrained` which class loads each part."""
    path = Path(folder) / "model_index.json"
    path.write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    return path


def save_diffusers_folder(components: ZImageComponents, folder: Path) -> Path:
    """Every component in its subfolder (safetensors, the tokenizer included) plus `model_index.json`."""
    folder = Path(folder)
    for role in ("transformer", "text_encoder", "vae"):
        getattr(components, role).save_pretrained(folder / role)
    components.scheduler.save_pretrained(folder / "scheduler")
    components.tokenizer.save_pretrained(folder / "tokenizer")
    write_model_index(folder)
    return folder
