"""Turn a `weights` string into ZImageComponents: the tiny preset, a folder, or a hub id."""

from __future__ import annotations

from pathlib import Path

import torch

from llm_dit.models.components import ZImageComponents
from llm_dit.models.tiny import build_tiny_components

TINY_PRESET = "tiny"


def check_weights_source(weights: str) -> None:
    """Fail fast (before anything loads) when `weights` cannot name a model."""
    if weights == TINY_PRESET:
        return
    path = Path(weights).expanduser()
    if path.exists():
        missing = [sub for sub in ("transformer", "vae", "text_encoder") if not (path / sub).is_dir()]
        if path.is_dir() and missing:
            raise FileNotFoundError(
                f"{path} is not a diffusers-format Z-Image folder: missing {', '.join(missing)}/"
            )
        return
    looks_like_hub_id = weights.count("/") == 1 and not weights.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise FileNotFoundError(
            f"weights folder {weights!r} does not exist; give a diffusers-format Z-Image folder, "
            f"a hub id such as Tongyi-MAI/Z-Image-Turbo, or 'tiny'"
        )


def load_components(weights: str = TINY_PRESET, dtype: torch.dtype = torch.float32, seed: int = 0) -> ZImageComponents:
    """Load every component; `seed` only matters for the tiny preset."""
    check_weights_source(weights)
    if weights == TINY_PRESET:
        return build_tiny_components(seed=seed, dtype=dtype)
    return load_diffusers_folder(weights, dtype=dtype)


def load_diffusers_folder(path_or_hub_id: str, dtype: torch.dtype = torch.bfloat16) -> ZImageComponents:
    """A diffusers-format folder (text_encoder/, tokenizer/, transformer/, vae/, scheduler/) or hub id."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from transformers import AutoTokenizer, Qwen3Model

    source = str(Path(path_or_hub_id).expanduser()) if Path(path_or_hub_id).expanduser().exists() else path_or_hub_id
    components = ZImageComponents(
        text_encoder=Qwen3Model.from_pretrained(source, subfolder="text_encoder", torch_dtype=dtype),
        tokenizer=AutoTokenizer.from_pretrained(source, subfolder="tokenizer"),
        transformer=ZImageTransformer2DModel.from_pretrained(source, subfolder="transformer", torch_dtype=dtype),
        vae=AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype),
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler"),
        source=source,
    )
    for module in components.modules().values():
        module.eval().requires_grad_(False)
    return components
