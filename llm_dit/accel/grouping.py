"""Run a mixed batch as unmasked sub-batches of equal sequence length.

Z-Image pads each caption to a multiple of 32 with its learned pad token, then
pads the batch to the longest [image, caption] sequence with zeros and a key
mask. A batch whose captions pad to different lengths (a CFG batch [positive,
negative], or several prompts) therefore runs masked attention, which rules out
the flash / cuDNN fast paths without masks and gives compiled blocks a second
graph. Masked keys contribute nothing, so each item's result equals running it
alone: this wrapper runs each group of items with the same (image shape, padded
caption length) as its own unmasked call and puts the outputs back in order.
Numerically it equals the masked batch up to the attention kernel's rounding.

Each sub-call runs inside `surgery.sub_batch`, so probes (refiner drift) know which
rows of the whole call it holds and put them back in place.

Installed as an instance `forward` through a `surgery.HookRegistry` (a bound method,
so `copy.deepcopy` re-binds it to the copy); it shows in `surgery.live_hooks()` and
`remove_length_grouping` (or `surgery.remove_all`) restores the class's forward.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

from surgery.hooks import HookRegistry, remove_all
from surgery.probes import sub_batch

SEQ_MULTIPLE = 32  # diffusers' SEQ_MULTI_OF for Z-Image
CHANGE_NAME = "length_grouping"


def padded_caption_length(length: int) -> int:
    return length + (-length) % SEQ_MULTIPLE


def length_groups(x: list[torch.Tensor], cap_feats: list[torch.Tensor]) -> list[list[int]]:
    """Indices of items that share image shape and padded caption length, in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for index, (latent, caption) in enumerate(zip(x, cap_feats)):
        groups.setdefault((tuple(latent.shape), padded_caption_length(len(caption))), []).append(index)
    return list(groups.values())


def _grouped_forward(self: nn.Module, x: Any, t: torch.Tensor, cap_feats: Any, return_dict: bool = True, **kwargs: Any):
    forward = type(self).forward
    plain = (
        isinstance(x, list) and x and isinstance(x[0], torch.Tensor)
        and all(kwargs.get(key) is None for key in ("controlnet_block_samples", "siglip_feats", "image_noise_mask"))
    )
    groups = length_groups(x, cap_feats) if plain else []
    if len(groups) <= 1:
        return forward(self, x, t, cap_feats, return_dict=return_dict, **kwargs)
    outputs: list[torch.Tensor | None] = [None] * len(x)
    for indices in groups:
        timesteps = torch.stack([t[i] for i in indices])
        with sub_batch(self, indices):
            sample = forward(self, [x[i] for i in indices], timesteps, [cap_feats[i] for i in indices],
                             return_dict=False, **kwargs)[0]
        for i, out in zip(indices, sample):
            outputs[i] = out
    if not return_dict:
        return (outputs,)
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=outputs)


def install_length_grouping(transformer: nn.Module, registry: HookRegistry | None = None) -> HookRegistry | None:
    """Make `transformer(...)` split mixed-length batches into unmasked sub-batches (idempotent).

    The change goes through `registry` (a new "accel" one if None), which is returned
    (None when grouping was already on)."""
    if has_length_grouping(transformer):
        return None
    registry = registry if registry is not None else HookRegistry("accel")
    registry.bind_forward(transformer, _grouped_forward, name=CHANGE_NAME)
    return registry


def remove_length_grouping(transformer: nn.Module) -> None:
    """Undo `install_length_grouping` (also on a deep copy, whose forward was copied with it)."""
    remove_all(transformer, match=f"*/{CHANGE_NAME}")
    if has_length_grouping(transformer):  # a copy: the bound forward came along, the registry entry did not
        transformer.__dict__.pop("forward", None)


def has_length_grouping(transformer: nn.Module) -> bool:
    forward = transformer.__dict__.get("forward")
    return isinstance(forward, types.MethodType) and forward.__func__ is _grouped_forward
