"""The five parts of a Z-Image pipeline, held together so every loader returns one shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
from transformers import PreTrainedTokenizerBase, Qwen3Model


@dataclass
class ZImageComponents:
    """Encoder, tokenizer, DiT, VAE and scheduler of one Z-Image model.

    Loaders (tiny preset, diffusers folder, single files) all return this, so the
    rest of the toolkit never cares where the weights came from. `source` records
    where they came from, for the run's reproducibility record.
    """

    text_encoder: Qwen3Model
    tokenizer: PreTrainedTokenizerBase
    transformer: ZImageTransformer2DModel
    vae: AutoencoderKL
    scheduler: FlowMatchEulerDiscreteScheduler
    source: str = "unknown"

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"text_encoder": self.text_encoder, "transformer": self.transformer, "vae": self.vae}

    def describe(self) -> dict[str, Any]:
        """Parameter counts and dtypes, for logs and the run record."""
        return {
            name: {
                "class": type(module).__name__,
                "parameters": sum(p.numel() for p in module.parameters()),
                "dtype": str(next(module.parameters()).dtype),
            }
            for name, module in self.modules().items()
        }
