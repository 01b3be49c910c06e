"""Regional compile of the DiT's repeated blocks, shape-generic so studies never recompile.

Each block class's `forward` is compiled once (`torch.compile(fullgraph=True)`)
and bound to every block of `layers` and `noise_refiner` as an instance
attribute. Compared with `nn.Module.compile` (what diffusers'
`compile_repeated_blocks` calls) this:

- keeps forward hooks outside the compiled region, so surgery probes that record
  block inputs/outputs still work and never break the graph;
- survives `copy.deepcopy` correctly (a bound method is re-bound to the copy,
  whereas a compiled `_call_impl` would keep calling the original block), which
  surgery's duplicate/identity-init copies rely on;
- is shape-generic from the first call (`dynamic=True`): the sequence length
  (image tokens + caption padded to 32) and the batch size are symbolic, so a
  new prompt length, batch size or resolution reuses the same kernels instead
  of recompiling. Z-Image attends to its learned caption pad tokens, so padding
  captions to fixed buckets would change images; dynamic shapes change nothing.

The bound forward is a thin eager wrapper: it brings the block's fused q/k/v and w1/w3
weights up to date (`llm_dit.accel.fused.sync_block`, a few pointer/version compares)
and then runs the compiled graph, which only reads them.

The context refiner is left eager: it runs once per prompt (refiner cache) on a
few dozen tokens, and surgery on it (skip, duplicate, style adapter) is the point
of most studies.
"""

from __future__ import annotations

import types
from collections.abc import Iterable

import torch
from torch import nn

from llm_dit.accel.fused import sync_block

COMPILED_TARGETS = ("layers", "noise_refiner")
_COMPILED_MARK = "_llm_dit_compiled_forward"


def configure_dynamo(cache_size_limit: int = 64) -> None:
    """Room for every graph a study needs (fp8/bf16, masked/unmasked, train/eval) without silent eager fallback."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, cache_size_limit)
    if hasattr(torch._dynamo.config, "accumulated_cache_size_limit"):
        torch._dynamo.config.accumulated_cache_size_limit = max(
            torch._dynamo.config.accumulated_cache_size_limit, 4 * cache_size_limit
        )


def compile_blocks(
    transformer: nn.Module,
    targets: Iterable[str] = COMPILED_TARGETS,
    *,
    dynamic: bool | None = True,
    mode: str | None = None,
    backend: str = "inductor",
    fullgraph: bool = True,
) -> int:
    """Compile the blocks of `targets` in place; returns how many blocks now run compiled.

    `mode` is torch.compile's (None, "max-autotune-no-cudagraphs", "reduce-overhead", ...);
    `backend="aot_eager"` traces without code generation (tests on CPU).
    """
    configure_dynamo()
    compiled: dict[type, object] = {}
    count = 0
    for target in targets:
        for block in getattr(transformer, target):
            cls = type(block)
            if cls not in compiled:
                compiled[cls] = _synced(torch.compile(cls.forward, fullgraph=fullgraph, dynamic=dynamic, mode=mode,
                                                      backend=backend))
            block.forward = types.MethodType(compiled[cls], block)
            setattr(block, _COMPILED_MARK, True)
            count += 1
    return count


def _synced(compiled):
    """The compiled forward behind an eager step that refreshes the block's fused weights."""

    def forward(self, *args, **kwargs):
        sync_block(self)
        return compiled(self, *args, **kwargs)

    forward.compiled = compiled
    return forward


def uncompile_blocks(transformer: nn.Module) -> int:
    """Undo `compile_blocks` (and `nn.Module.compile`): every block runs eager again."""
    count = 0
    for module in transformer.modules():
        if module.__dict__.pop(_COMPILED_MARK, False):
            module.__dict__.pop("forward", None)
            count += 1
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
            count += 1
    return count


def is_compiled(block: nn.Module) -> bool:
    return bool(block.__dict__.get(_COMPILED_MARK)) or getattr(block, "_compiled_call_impl", None) is not None
