"""A batched forward of diffusers' `ZImageTransformer2DModel` for training.

diffusers' forward takes lists (one latent and one caption per sample) and pads,
embeds and builds position ids sample by sample in Python. For the embedded model
(dim 192, 16 image tokens) that Python is most of a training step. Here every
sample has the same image size, so patchify, the image pad tokens and the unified
sequence are single tensor operations; captions may still differ in length, and
get exactly the padding, position ids and attention mask diffusers gives them.

It calls the model's own modules (embedders, refiners, layers, final layer) in the
same order with the same arguments: forward hooks and surgery on the blocks still
fire. `tests/test_world_model.py` checks it against `model(...)` to float rounding.
"""

from __future__ import annotations

import torch
from diffusers import ZImageTransformer2DModel

SEQ_MULTIPLE = 32  # diffusers pads captions and image tokens to a multiple of 32


def _round_up(value: int | torch.Tensor, multiple: int = SEQ_MULTIPLE):
    return (value + multiple - 1) // multiple * multiple


def batched_forward(
    model: ZImageTransformer2DModel,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    cap_feats: torch.Tensor,
    cap_lengths: torch.Tensor,
    patch_size: int = 2,
    cap_len_max: int | None = None,
) -> torch.Tensor:
    """The velocity diffusers' forward returns, for a batch of one image size.

    Args:
        latents: [B, C, H, W] (diffusers wants a list of [C, 1, H, W]).
        timesteps: [B], the model's `t` (1 - sigma).
        cap_feats: [B, L, D] caption features, right-padded; rows past a sample's
            length are ignored.
        cap_lengths: [B] number of real caption rows per sample.
        cap_len_max: caption positions of the unified sequence, a multiple of 32 at least every
            sample's padded length; None reads it from `cap_lengths` (what diffusers does).
            Give it under torch.compile: reading it from the data is a graph break, and the
            extra positions are masked out, so the output is the same.

    Returns: [B, C, H, W], what `model([...], t, [...]).sample` stacks to.
    """
    batch, channels, height, width = latents.shape
    device = latents.device
    dtype = latents.dtype
    f_patch = 1
    key = f"{patch_size}-{f_patch}"
    h_tokens, w_tokens = height // patch_size, width // patch_size
    image_len = h_tokens * w_tokens
    image_padded = _round_up(image_len)

    adaln = model.t_embedder(timesteps * model.t_scale).type_as(latents)

    # Image tokens: "c (h ph) (w pw) -> (h w) (ph pw c)", then the learned pad token.
    patches = latents.view(batch, channels, h_tokens, patch_size, w_tokens, patch_size)
    patches = patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, image_len, patch_size * patch_size * channels)
    x = model.all_x_embedder[key](patches)
    if image_padded > image_len:
        x = torch.cat([x, model.x_pad_token.to(x.dtype).expand(batch, image_padded - image_len, -1)], dim=1)

    # Caption tokens: each sample padded to its own multiple of 32 with the learned pad token.
    cap_lengths = cap_lengths.to(device)
    cap_padded = _round_up(cap_lengths)
    static = cap_len_max is not None  # no data-dependent Python below (a graph break under compile)
    if not static:
        cap_len_max = int(cap_padded.max())
    if cap_feats.shape[1] < cap_len_max:
        cap_feats = torch.nn.functional.pad(cap_feats, (0, 0, 0, cap_len_max - cap_feats.shape[1]))
    cap_feats = cap_feats[:, :cap_len_max]
    positions = torch.arange(cap_len_max, device=device)
    cap = model.cap_embedder(cap_feats.to(dtype))
    is_pad = (positions[None, :] >= cap_lengths[:, None]) & (positions[None, :] < cap_padded[:, None])
    cap = torch.where(is_pad[..., None], model.cap_pad_token.to(cap.dtype), cap)
    cap_valid = positions[None, :] < cap_padded[:, None]
    cap = cap * cap_valid[..., None]
    cap_uniform = False if static else bool((cap_padded == cap_len_max).all())

    # RoPE ids: captions at (1 + k, 0, 0); the image at (caption length + 1, h, w); pads at 0.
    zeros = torch.zeros_like(positions)
    cap_ids = torch.stack([positions + 1, zeros, zeros], dim=-1)
    cap_freqs = model.rope_embedder(cap_ids)[None].expand(batch, -1, -1) * cap_valid[..., None]
    hh, ww = torch.meshgrid(torch.arange(h_tokens, device=device), torch.arange(w_tokens, device=device), indexing="ij")
    image_ids = torch.stack([torch.zeros(image_len, device=device, dtype=torch.long), hh.flatten(), ww.flatten()], dim=-1)
    image_ids = image_ids[None].repeat(batch, 1, 1)
    image_ids[:, :, 0] = (cap_padded + 1)[:, None]
    if image_padded > image_len:
        image_ids = torch.cat([image_ids, torch.zeros(batch, image_padded - image_len, 3, dtype=torch.long, device=device)], 1)
    x_freqs = model.rope_embedder(image_ids.reshape(-1, 3)).view(batch, image_padded, -1)

    for layer in model.noise_refiner:
        x = layer(x, None, x_freqs, adaln)
    cap_mask = None if cap_uniform else cap_valid
    for layer in model.context_refiner:
        cap = layer(cap, cap_mask, cap_freqs)

    unified = torch.cat([x, cap * cap_valid[..., None]], dim=1)
    unified_freqs = torch.cat([x_freqs, cap_freqs], dim=1)
    unified_mask = None if cap_uniform else torch.cat([torch.ones_like(x[..., 0], dtype=torch.bool), cap_valid], dim=1)
    for layer in model.layers:
        unified = layer(unified, unified_mask, unified_freqs, adaln)
    out = model.all_final_layer[key](unified, c=adaln)[:, :image_len]
    out = out.view(batch, h_tokens, w_tokens, patch_size, patch_size, model.out_channels)
    return out.permute(0, 5, 1, 3, 2, 4).reshape(batch, model.out_channels, height, width)
