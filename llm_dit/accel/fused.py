"""Fused projections: one GEMM for q/k/v and one for the SwiGLU's w1/w3, on cached weights.

Z-Image's blocks multiply the same activations by `to_q`, `to_k`, `to_v` (3 x 3840 outputs)
and by `w1`, `w3` (2 x 10240). One product with the concatenated weight computes exactly
the same dot products (only the GEMM kernel's bf16 rounding may differ) in fewer, larger
kernels. Opt-in (`accelerate(fuse_projections=...)`): in isolation the larger GEMMs run
faster, but in the compiled full-size forward the GEMMs run power-capped at the same rate
either way, and the forward measured no faster (benchmarks/NOTES.md, v2), for a second copy
of the fused weights.

The modules and their parameters are left as they are: `state_dict`, surgery, hooks and
LoRA see the original `to_q`/`to_k`/`to_v`/`w1`/`w3`. The concatenated weight is a cached
copy kept as a non-persistent buffer of the attention / feed-forward module (so it moves
with `.to()`, never enters a checkpoint, and `shared_weight_copy` shares it), rebuilt when
a source changes:

- its signature is each source's (data pointer, version counter, dtype, shape): in-place
  edits under `torch.no_grad()` (`zero_`, `copy_`, `load_state_dict`), `.to()` and
  reassigning `.data` all change it. (`param.data.mul_(...)` bypasses the version counter,
  as it does for autograd: call `refresh_fused(module)` after such edits.);
- it is dropped, and the separate linears run, while any source is not a plain
  `nn.Linear` / `Float8Linear` (a LoRA wrapper, a swapped module), carries a forward hook,
  or needs a gradient (grad mode on and `requires_grad`).

The check runs eagerly: inside the projection when the block runs eager, and in the
compiled block's wrapper (`llm_dit.accel.compile`) before the compiled graph runs; the
graph itself only reads the buffer. In fp8 mode (`llm_dit.accel.fp8`) the fused weight
is the concatenation of the float8 weights and of their per-row scales, which is exactly
the row-wise quantization of the concatenated bf16 weight.

Marking a module for fusion (its source names, the two buffers, the feed-forward's bound
forward) goes through a `surgery.HookRegistry`: it shows in `surgery.live_hooks()`, and
`remove_fused_projections` / `surgery.remove_all` undo it.

Memory: a second copy of the fused weights (q/k/v and w1/w3 of every block; sizes in
benchmarks/NOTES.md).
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module_impl

from llm_dit.accel.fp8 import FP8_DTYPE, Float8Linear, fp8_linear
from llm_dit.accel.gate_kernel import gated_down_projection
from surgery.hooks import HookRegistry, remove_all

QKV = ("to_q", "to_k", "to_v")
FFN = ("w1", "w3")
FUSED_TARGETS = ("layers", "noise_refiner")
WEIGHT = "_llm_dit_fused_weight"  # bf16 [sum N, K], or float8 bits (uint8) [sum N, K]
SCALE = "_llm_dit_fused_scale"  # None (bf16), or float32 bits (int32) [1, sum N]
_SOURCES = "_llm_dit_fused_sources"  # child names, marks a module as fused
_SIGNATURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> what its fused weight was built from
_FAST_ACCUM = "_llm_dit_fused_fast_accum"
CHANGE_PREFIX = "fused:"


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _global_hooks() -> bool:
    return bool(_module_impl._global_forward_hooks or _module_impl._global_forward_pre_hooks)


def _sources(module: nn.Module, linears: list) -> tuple[str, list[torch.Tensor]] | None:
    """("bf16" | "fp8", tensors to concatenate) if `linears` can run as one GEMM, else None."""
    kinds = {type(linear) for linear in linears}
    if len(kinds) != 1 or kinds.pop() not in (nn.Linear, Float8Linear):
        return None  # a LoRA wrapper, a swapped or missing module: run them as they are
    if any(_has_hooks(linear) for linear in linears) or _global_hooks():
        return None
    if len({linear.out_features for linear in linears}) != 1 or len({linear.in_features for linear in linears}) != 1:
        return None
    if any(linear.bias is not None for linear in linears):
        return None
    if type(linears[0]) is nn.Linear:
        weights = _source_tensors("bf16", linears)
        if len({(w.dtype, w.device) for w in weights}) != 1:
            return None
        if torch.is_grad_enabled() and any(w.requires_grad for w in weights):
            return None  # training: gradients must reach the original parameters
        return "bf16", weights
    if len({linear.fast_accum for linear in linears}) != 1:
        return None
    return "fp8", _source_tensors("fp8", linears)


def _state(tensors: list[torch.Tensor]) -> tuple:
    # inference tensors have no version counter (and cannot be edited outside inference mode)
    return tuple((t.data_ptr(), -1 if t.is_inference() else t._version) for t in tensors)


def _set(module: nn.Module, weight: torch.Tensor | None, scale: torch.Tensor | None) -> None:
    module._buffers[WEIGHT] = weight
    module._buffers[SCALE] = scale


def _tensor_names(kind: str) -> tuple[tuple[str, str], ...]:
    """Where the tensors to concatenate live: (`_parameters` or `_buffers`, name)."""
    return (("_parameters", "weight"),) if kind == "bf16" else (("_buffers", "weight_bits"), ("_buffers", "scale_bits"))


def _source_tensors(kind: str, linears: list) -> list[torch.Tensor]:
    return [linear.__dict__[table][name] for table, name in _tensor_names(kind) for linear in linears]


def _unchanged(module: nn.Module, linears: list) -> bool:
    """The fast path of `sync_fused` (every block call): same modules, no hooks, same tensors and versions."""
    cached = _SIGNATURES.get(module)
    if cached is None or module._buffers.get(WEIGHT) is None:
        return False
    kind, cached_linears, cached_tensors, state = cached  # weak references: a swapped-out module or tensor is freed
    for linear, cached_linear in zip(linears, cached_linears):
        if linear is not cached_linear() or linear._forward_hooks or linear._forward_pre_hooks:
            return False
    if _global_hooks():
        return False
    grad = torch.is_grad_enabled()
    tensors = _source_tensors(kind, linears)
    for tensor, cached_tensor in zip(tensors, cached_tensors):
        if tensor is not cached_tensor() or (grad and tensor.requires_grad):
            return False
    return _state(tensors) == state


def sync_fused(module: nn.Module) -> bool:
    """Bring `module`'s fused weight up to date with its sources (or drop it); True if it is usable.

    Sources are the same when the child modules, their weight tensors (object, data pointer,
    version counter) are; dtype, shape and device changes move the data pointer.
    """
    names = module.__dict__.get(_SOURCES)
    if names is None:
        return False
    linears = [module._modules.get(name) for name in names]
    if _unchanged(module, linears):
        return True
    found = _sources(module, linears)
    _set(module, None, None)  # drop a stale copy before building the new one
    _SIGNATURES.pop(module, None)
    if found is None:
        return False
    kind, tensors = found
    # A plain tensor even under inference mode: frozen-weight training may run these blocks with grad on.
    with torch.no_grad(), torch.inference_mode(False):
        if kind == "bf16":
            _set(module, torch.cat(tensors), None)
        else:
            count = len(names)
            _set(module, torch.cat(tensors[:count]), torch.cat(tensors[count:], dim=1))
            module.__dict__[_FAST_ACCUM] = linears[0].fast_accum
    # Kept outside the module (weakly): deep copies and pickles of the module carry no signature and rebuild.
    _SIGNATURES[module] = (kind, [weakref.ref(m) for m in linears], [weakref.ref(t) for t in tensors], _state(tensors))
    return True


def refresh_fused(module: nn.Module) -> None:
    """Rebuild `module`'s (or, for a model, every) fused weight, e.g. after edits through `.data`."""
    for child in module.modules():
        _SIGNATURES.pop(child, None)
        sync_fused(child)


def sync_block(block: nn.Module) -> None:
    """`sync_fused` on the block's direct children (attention, feed_forward); cheap when nothing changed."""
    for child in block._modules.values():
        if child is not None and _SOURCES in child.__dict__:
            sync_fused(child)


def fused_projection(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """`x` times the fused weight of `module` ([..., sum N]), or None when the separate linears must run.

    Eager, this first brings the cache up to date; inside a compiled graph it only reads the
    buffer (the compiled block's wrapper has synced it before the graph runs).
    """
    if not torch.compiler.is_compiling():
        sync_fused(module)
    weight = getattr(module, WEIGHT, None)
    if weight is None:
        return None
    scale = getattr(module, SCALE, None)
    if scale is None:
        return F.linear(x, weight)
    return fp8_linear(x, weight.view(FP8_DTYPE), scale.view(torch.float32), None, getattr(module, _FAST_ACCUM))


def _fused_feed_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """diffusers' FeedForward (w2(silu(w1 x) * w3 x)) with w1 and w3 as one GEMM."""
    gate_up = fused_projection(self, x)
    if gate_up is None:
        return type(self).forward(self, x)
    x1, x3 = gate_up.chunk(2, dim=-1)
    return gated_down_projection(self, x1, x3)


def _mark(module: nn.Module, names: tuple[str, ...], registry: HookRegistry) -> None:
    change = f"{CHANGE_PREFIX}{type(module).__name__}"
    module_ref = weakref.ref(module)

    def forget_cache() -> None:  # the cached copy and what it was built from
        target = module_ref()
        if target is not None:
            _SIGNATURES.pop(target, None)
            target.__dict__.pop(_FAST_ACCUM, None)

    registry.add_change(module, forget_cache, name=change)
    registry.set_attribute(module, _SOURCES, names, name=change)
    for buffer in (WEIGHT, SCALE):
        if buffer not in module._buffers:
            registry.add_buffer(module, buffer, None, name=change, persistent=False)


def install_fused_projections(
    transformer: nn.Module, targets: Iterable[str] = FUSED_TARGETS, *, qkv: bool = True, ffn: bool = True,
    registry: HookRegistry | None = None,
) -> int:
    """Mark the attention (q/k/v) and feed-forward (w1/w3) of `targets`' blocks for fusion; returns how many.

    q/k/v fusion needs an attention processor that asks for it (`ZImageRealRopeProcessor`,
    installed by `accelerate`); w1/w3 fusion binds the feed-forward's forward. Weights are
    built on the first forward. The changes go through `registry` (a new "accel" one if None).
    """
    registry = registry if registry is not None else HookRegistry("accel")
    count = 0
    for target in targets:
        for block in getattr(transformer, target):
            attention, feed_forward = getattr(block, "attention", None), getattr(block, "feed_forward", None)
            if qkv and attention is not None and _SOURCES not in attention.__dict__ \
                    and all(name in attention._modules for name in QKV):
                _mark(attention, QKV, registry)
                count += 1
            if ffn and feed_forward is not None and _SOURCES not in feed_forward.__dict__ \
                    and all(name in feed_forward._modules for name in FFN):
                _mark(feed_forward, FFN, registry)
                registry.bind_forward(feed_forward, _fused_feed_forward, name=f"{CHANGE_PREFIX}{type(feed_forward).__name__}")
                count += 1
    return count


def remove_fused_projections(transformer: nn.Module) -> int:
    """Undo `install_fused_projections`: drop the fused weights, the separate linears run again.
    Returns how many modules were marked."""
    count = sum(_SOURCES in module.__dict__ for module in transformer.modules())
    remove_all(transformer, match=f"*/{CHANGE_PREFIX}*")
    for module in transformer.modules():  # deep copies: the marks came along, the registry entries did not
        if module.__dict__.pop(_SOURCES, None) is None:
            continue
        _SIGNATURES.pop(module, None)
        module.__dict__.pop(_FAST_ACCUM, None)
        module._buffers.pop(WEIGHT, None)
        module._buffers.pop(SCALE, None)
        forward = module.__dict__.get("forward")
        if isinstance(forward, types.MethodType) and forward.__func__ is _fused_feed_forward:
            del module.__dict__["forward"]
    return count


def is_fused(module: nn.Module) -> bool:
    """Whether `module` is marked for fusion and its fused weight is built."""
    return _SOURCES in module.__dict__ and module._buffers.get(WEIGHT) is not None


def fused_bytes(transformer: nn.Module) -> int:
    """Bytes held by the fused weight copies (memory reports)."""
    return sum(t.numel() * t.element_size() for m in transformer.modules() if _SOURCES in m.__dict__
               for t in (m._buffers.get(WEIGHT), m._buffers.get(SCALE)) if t is not None)
