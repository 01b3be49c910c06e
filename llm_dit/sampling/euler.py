"""The Euler flow-match loop with CFG and skip-layer guidance, in ZImagePipeline's arithmetic.

Kept numerically identical to diffusers 0.42.1's `ZImagePipeline.__call__`: the
transformer gets t = (1000 - timestep) / 1000, the positive and negative branches
run as one batch [pos..., neg...], CFG is pos + g * (pos - neg) in float32, the
prediction is negated and handed to the scheduler's Euler step in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel

import surgery
from llm_dit.sampling.step_cache import StepCache


def run_transformer(
    transformer: ZImageTransformer2DModel, latents: torch.Tensor, timestep: torch.Tensor, cap_feats: list[torch.Tensor]
) -> torch.Tensor:
    """One DiT call on a batch of fp32 latents [B,16,h,w]; returns float32 [B,16,h,w]."""
    model_input = list(latents.to(transformer.dtype).unsqueeze(2).unbind(dim=0))
    outputs = transformer(model_input, timestep, cap_feats, return_dict=False)[0]
    return torch.stack([out.float() for out in outputs], dim=0).squeeze(2)


def denoise(
    transformer: ZImageTransformer2DModel,
    scheduler: FlowMatchEulerDiscreteScheduler,
    latents: torch.Tensor,
    cap_feats: list[torch.Tensor],
    guidance_scale: float = 0.0,
    negative_cap_feats: list[torch.Tensor] | None = None,
    skip_layer_guidance: surgery.SkipLayerGuidance | None = None,
    on_step: Callable[[int], None] | None = None,
    step_cache: StepCache | None = None,
    row_keys: Sequence[Hashable] | None = None,
) -> torch.Tensor:
    """Run the whole schedule of `scheduler` from noise `latents` (float32) to clean latents.

    With `step_cache` and one `row_keys` entry per row (everything besides the schedule
    that the row's predictions depend on: prompt encoding, seed, size, guidance, surgery,
    weights), steps whose sigma prefix the cache wants are served from / stored in it.
    """
    batch = latents.shape[0]
    use_cfg = guidance_scale > 0
    if use_cfg and (negative_cap_feats is None or len(negative_cap_feats) != batch):
        raise ValueError("CFG needs one negative caption per item")
    if step_cache is not None and (row_keys is None or len(row_keys) != batch):
        raise ValueError("a step cache needs one row key per item")
    timesteps = scheduler.timesteps
    sigmas = [float(s) for s in scheduler.sigmas.tolist()] if step_cache is not None else []
    for step, t in enumerate(timesteps):
        guided = skip_layer_guidance is not None and skip_layer_guidance.active(step, len(timesteps))
        keys, prediction = None, None
        prefix = tuple(sigmas[: step + 1])
        if step_cache is not None and step_cache.wants(prefix):
            keys = [(row, prefix, guided) for row in row_keys]
            prediction = step_cache.lookup(keys, latents.device)
        if prediction is None:
            prediction = _predict(transformer, latents, (1000 - t.expand(batch)) / 1000, cap_feats, guidance_scale,
                                  negative_cap_feats, skip_layer_guidance if guided else None)
            if keys is not None:
                step_cache.store(keys, prediction)
        latents = scheduler.step((-prediction).to(torch.float32), t, latents, return_dict=False)[0]
        if on_step is not None:
            on_step(step)
    return latents


def _predict(
    transformer: ZImageTransformer2DModel,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    cap_feats: list[torch.Tensor],
    guidance_scale: float,
    negative_cap_feats: list[torch.Tensor] | None,
    skip_layer_guidance: surgery.SkipLayerGuidance | None,
) -> torch.Tensor:
    """The guided prediction for one step: CFG when `guidance_scale` > 0, then skip-layer guidance if given."""
    batch = latents.shape[0]
    if guidance_scale > 0:
        out = run_transformer(transformer, latents.repeat(2, 1, 1, 1), timestep.repeat(2), cap_feats + negative_cap_feats)
        positive, negative = out[:batch], out[batch:]
        prediction = positive + guidance_scale * (positive - negative)
    else:
        positive = prediction = run_transformer(transformer, latents, timestep, cap_feats)
    if skip_layer_guidance is not None:
        with skip_layer_guidance.context(transformer):
            skipped = run_transformer(transformer, latents, timestep, cap_feats)
        prediction = skip_layer_guidance.guide(prediction, positive, skipped)
    return prediction


def initial_noise(seeds: list[int], height: int, width: int, channels: int = 16, vae_scale_factor: int = 8) -> torch.Tensor:
    """Per-item noise drawn on the CPU from each item's own seed.

    Independent of batch composition, rank and device, so an item's image never
    depends on what it was batched with or where it ran. Matches ZImagePipeline
    called with `generator=torch.Generator().manual_seed(seed)` for one image
    (whose latent side is 2 * (side // (2 * vae_scale_factor)), as here).
    """
    scale = 2 * vae_scale_factor
    shape = (1, channels, 2 * (height // scale), 2 * (width // scale))
    return torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds], dim=0)


def vae_scale_factor(vae) -> int:
    """Pixels per latent side, as diffusers' pipelines compute it from the VAE's config."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE decode as ZImagePipeline does; returns [B,3,H,W] float32 in [0,1]."""
    latents = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
    image = vae.decode(latents, return_dict=False)[0]
    return (image.float() / 2 + 0.5).clamp(0, 1)

