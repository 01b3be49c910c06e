"""The `random-z-image-turbo` preset: full-size Z-Image-Turbo with deterministic random weights.

Same classes and shapes as the real model (6.15 B DiT, Qwen3-4B encoder, FLUX VAE),
no download. It exists for benchmarks: speed does not depend on the weights'
values, so timings on it are the real model's timings (images are noise-like).
Weights are drawn directly on the target device in the target dtype: no float32 copy on
the CPU, no CPU-side init (timings in benchmarks/NOTES.md, "Measurements moved from docstrings").
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
from transformers import Qwen3Config, Qwen3Model

from llm_dit.models.components import ZImageComponents
from llm_dit.models.config import RANDOM_Z_IMAGE_TURBO
from llm_dit.models.shapes import (
    FLUX_VAE_CONFIG, QWEN3_4B_CONFIG, ZIMAGE_SCHEDULER_CONFIG, ZIMAGE_TURBO_TRANSFORMER_CONFIG,
)
from llm_dit.models.tiny import load_bundled_tokenizer

RANDOM_PRESET = RANDOM_Z_IMAGE_TURBO


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def _building_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters straight on `device` in `dtype`; restores the default dtype after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_random_components(
    seed: int = 0, dtype: torch.dtype = torch.bfloat16, device: torch.device | str | None = None
) -> ZImageComponents:
    """Full-size Z-Image-Turbo with random weights drawn from `seed` on `device` (default: cuda if any)."""
    device = torch.device(device) if device is not None else default_device()
    tokenizer = load_bundled_tokenizer()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), _building_on(device, dtype):
        torch.manual_seed(seed)
        text_encoder = Qwen3Model(Qwen3Config(**QWEN3_4B_CONFIG))
        transformer = ZImageTransformer2DModel(**ZIMAGE_TURBO_TRANSFORMER_CONFIG)
        for pad_token in (transformer.x_pad_token, transformer.cap_pad_token):
            pad_token.data.normal_(0.0, 0.02)  # trained pad tokens are not zero
        vae = AutoencoderKL(**FLUX_VAE_CONFIG)
    scheduler = FlowMatchEulerDiscreteScheduler(**ZIMAGE_SCHEDULER_CONFIG)
    components = ZImageComponents(
        text_encoder, tokenizer, transformer, vae, scheduler, source=f"{RANDOM_PRESET}(seed={seed}, {device})"
    )
    for module in components.modules().values():
        module.eval().requires_grad_(False)
    return components
