"""Load a Z-Image model for generating from saved embeddings: DiT, VAE and scheduler, no text encoder.

A diffusers folder or single files never read, build or allocate the encoder (Qwen3-4B: ~8 GB
in bfloat16), nor its tokenizer. The embedded presets (`tiny`, `tiny-random`,
`random-z-image-turbo`) draw every component's weights from one seed, encoder first, so the
only way to get the same DiT is to build them all; the encoder is then dropped at once (it is
never moved to a device or run). Hub ids are loaded the same way (offline they cannot load anyway).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llm_dit.errors import UserError
from llm_dit.models.components import ZImageComponents
from llm_dit.models.loading import load_components, resolve_weights
from llm_dit.models.placement import Placement, release_cached_memory, resolve_dtype, set_vae_tiling
from llm_dit.models.single_file import load_single_file
from llm_dit.models.tiny import ZIMAGE_SCHEDULER_CONFIG

GENERATION_PARTS = ("transformer", "vae")


def load_components_without_text_encoder(
    weights: Any, dtype: torch.dtype | str = torch.float32, seed: int = 0, *, placement: Placement | None = None,
    allow_pickle: bool = False, caption_dim: int | None = None,
) -> ZImageComponents:
    """Components with `text_encoder` and `tokenizer` None. `caption_dim` (the saved features'
    width) is checked against the transformer's caption embedder."""
    resolved = resolve_weights(weights, allow_pickle)
    default = resolve_dtype(dtype) or torch.float32
    dtypes = {part: (placement.dtype_for(part) if placement is not None else None) or default for part in GENERATION_PARTS}
    if resolved.kind == "diffusers":
        components = _from_diffusers_folder(Path(resolved.location), dtypes, allow_pickle)
    elif resolved.kind == "single_files":
        components = _from_single_files(resolved.location, dtypes, allow_pickle)
    else:
        components = load_components(weights, dtype=default, seed=seed, allow_pickle=allow_pickle)
        components.text_encoder, components.tokenizer = None, None
        release_cached_memory()  # the dropped encoder's memory goes back before anything is generated
        for part in GENERATION_PARTS:
            getattr(components, part).to(dtypes[part])
    if placement is not None:
        for part in GENERATION_PARTS:
            getattr(components, part).to(device=placement.home_for(part), dtype=placement.dtype_for(part))
        set_vae_tiling(components.vae, placement.vae_tiling)
    _check_caption_dim(components, caption_dim, weights)
    return components


def _from_diffusers_folder(folder: Path, dtypes: dict[str, torch.dtype], allow_pickle: bool) -> ZImageComponents:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel


    safetensors = None if allow_pickle else True
    transformer = ZImageTransformer2DModel.from_pretrained(
        str(folder), subfolder="transformer", torch_dtype=dtypes["transformer"], use_safetensors=safetensors)
    vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae", torch_dtype=dtypes["vae"], use_safetensors=safetensors)
    if (folder / "scheduler").is_dir():
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder), subfolder="scheduler")
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(**ZIMAGE_SCHEDULER_CONFIG)
    return _finished(ZImageComponents(None, None, transformer, vae, scheduler, source=f"{folder} (no text encoder)"))


def _from_single_files(spec: Any, dtypes: dict[str, torch.dtype], allow_pickle: bool) -> ZImageComponents:
    from diffusers import FlowMatchEulerDiscreteScheduler


    files, configs = spec.files(), spec.configs()
    modules = {part: load_single_file(files[part], part, dtypes[part], configs[part], allow_pickle)
               for part in GENERATION_PARTS}
    source = ", ".join(f"{part}={files[part]}" for part in GENERATION_PARTS)
    return _finished(ZImageComponents(None, None, modules["transformer"], modules["vae"],
                                      FlowMatchEulerDiscreteScheduler(**ZIMAGE_SCHEDULER_CONFIG),
                                      source=f"single files: {source} (no text encoder)"))


def _finished(components: ZImageComponents) -> ZImageComponents:
    for part in GENERATION_PARTS:
        getattr(components, part).eval().requires_grad_(False)
    return components


def _check_caption_dim(components: ZImageComponents, caption_dim: int | None, weights: Any) -> None:
    expected = components.transformer.config.cap_feat_dim
    if caption_dim is not None and caption_dim != expected:
        raise UserError(f"the saved embeddings are {caption_dim} wide but the transformer of {weights} takes "
                        f"{expected}-wide caption features; use the weights the embeddings were made for")
