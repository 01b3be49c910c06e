"""Regional compile of the DiT's repeated blocks (shape-generic, so studies never recompile),
of the text encoder's decoder layers and of the VAE decoder.

Each block class's `forward` is compiled once (`torch.compile(fullgraph=True)`)
and bound to every block of `layers` and `noise_refiner` as an instance
attribute, through a `surgery.HookRegistry` (so it shows in `surgery.live_hooks()`
and `uncompile_blocks` / `surgery.remove_all` undo it). Compared with `nn.Module.compile` (what diffusers'
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
from surgery.hooks import HookRegistry, remove_all

COMPILED_TARGETS = ("layers", "noise_refiner")
CHANGE_PREFIX = "compile:"
_COMPILED_FUNCTION = "_llm_dit_compiled"  # set on the functions we compile (not on modules)


COMPILE_PARTS = ("dit", "encoder", "vae")


def compile_parts(compile: bool | str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Which components a `compile` option names: True = all of COMPILE_PARTS, False/None = none."""
    if compile is None or compile is False:
        return ()
    if compile is True:
        return COMPILE_PARTS
    parts = (compile,) if isinstance(compile, str) else tuple(compile)
    unknown = [p for p in parts if p not in COMPILE_PARTS]
    if unknown:
        raise ValueError(f"compile: unknown part(s) {unknown}; choose from {', '.join(COMPILE_PARTS)}, or true / false")
    return tuple(p for p in COMPILE_PARTS if p in parts)


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
    registry: HookRegistry | None = None,
) -> int:
    """Compile the blocks of `targets` in place; returns how many blocks now run compiled.

    `mode` is torch.compile's (None, "max-autotune-no-cudagraphs", "reduce-overhead", ...);
    `backend="aot_eager"` traces without code generation (tests on CPU).
    """
    blocks = [block for target in targets for block in getattr(transformer, target)]
    return compile_forwards(blocks, dynamic=dynamic, mode=mode, backend=backend, fullgraph=fullgraph, wrap=_synced,
                            registry=registry)


def compile_text_encoder(
    text_encoder: nn.Module, *, backend: str = "inductor", mode: str | None = None, registry: HookRegistry | None = None
) -> int:
    """Compile each Qwen3 decoder layer in place (shape-generic: any prompt length, no recompiles).

    At batch 1 and a few dozen tokens the encoder is launch-bound, not FLOP-bound: eager
    transformers issues many small kernels and a Python layer per decoder layer; compiled, RMSNorm, RoPE and SwiGLU each become one kernel. Forward hooks (the
    encoder's hidden-state capture) stay outside the compiled region, and
    `llm_dit.encoding.encoder` slicing the layer list keeps working because each layer
    carries its own compiled forward.

    Not `fullgraph`: once anything has asked transformers for `output_hidden_states` (diffusers'
    `encode_prompt` does), transformers hangs output-capturing hooks on the attention modules that
    read a `ContextVar`, which torch 2.11's Dynamo cannot trace; it then splits the layer around
    the hook instead of failing (no split without those hooks, and none on newer torch).
    """
    return compile_forwards(list(text_encoder.layers), dynamic=True, mode=mode, backend=backend, fullgraph=False,
                            registry=registry)


def compile_vae_decoder(
    vae: nn.Module, *, backend: str = "inductor", mode: str | None = None, registry: HookRegistry | None = None
) -> int:
    """Compile the VAE decoder in place; `vae.decode` then runs it compiled.

    The decoder is bandwidth-bound in eager: every GroupNorm, SiLU and residual add is a
    separate pass over activations of up to 128 x 1024^2 per image; Inductor fuses them
    into the convolutions' neighbours and picks the convolution layout itself. Static
    shapes: one graph per (batch, resolution), which a study has few of; a shape-generic graph
    ran slower per image than the static ones (benchmarks/NOTES.md).
    """
    return compile_forwards([vae.decoder], dynamic=False, mode=mode, backend=backend, registry=registry)


def compile_forwards(
    modules: Iterable[nn.Module],
    *,
    dynamic: bool | None = True,
    mode: str | None = None,
    backend: str = "inductor",
    fullgraph: bool = True,
    wrap=None,
    options: dict | None = None,
    registry: HookRegistry | None = None,
) -> int:
    """Bind one compiled `forward` per module class to every module in `modules`, through
    `registry` (a new "accel" one if None).

    `wrap(compiled)` may put an eager step in front of the compiled function (the DiT's
    fused-weight refresh). Undone by `uncompile_blocks` on any parent module.
    """
    registry = registry if registry is not None else HookRegistry("accel")
    configure_dynamo()
    compiled: dict[type, object] = {}
    count = 0
    for module in modules:
        cls = type(module)
        if cls not in compiled:
            function = torch.compile(cls.forward, fullgraph=fullgraph, dynamic=dynamic, mode=mode, backend=backend,
                                     options=options)
            compiled[cls] = wrap(function) if wrap is not None else function
            setattr(compiled[cls], _COMPILED_FUNCTION, True)
        registry.bind_forward(module, compiled[cls], name=f"{CHANGE_PREFIX}{cls.__name__}")
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
    """Undo `compile_blocks` / `compile_forwards` (and `nn.Module.compile`) on `transformer`'s tree:
    every module runs eager again. Returns how many modules were compiled."""
    count = remove_all(transformer, match=f"*/{CHANGE_PREFIX}*")
    for module in transformer.modules():
        if _has_compiled_forward(module):  # a deep copy: the bound forward came along, the registry entry did not
            del module.__dict__["forward"]
            count += 1
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
            count += 1
    return count


def _has_compiled_forward(module: nn.Module) -> bool:
    forward = module.__dict__.get("forward")
    return isinstance(forward, types.MethodType) and getattr(forward.__func__, _COMPILED_FUNCTION, False)


def is_compiled(block: nn.Module) -> bool:
    return _has_compiled_forward(block) or getattr(block, "_compiled_call_impl", None) is not None
