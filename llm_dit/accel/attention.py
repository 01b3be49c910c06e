"""The DiT's attention: a compile-friendly processor and the kernel choice.

`ZImageRealRopeProcessor` is diffusers' `ZSingleStreamAttnProcessor` with the
rotary embedding written in real float32 arithmetic instead of complex64
multiplication. The values are the same (a complex product is those four real
products in float32), but Inductor cannot generate code for complex operators:
diffusers' version leaves several unfused kernels per q/k per block, this one
fuses RoPE into the kernel that already computes the q/k RMSNorm.

Since v2 the processor also
- runs q/k/v as one GEMM when the attention module is marked for fusion (opt-in,
  `llm_dit.accel.fused`; same dot products, one kernel);
- calls cuDNN attention itself when the backend is `_native_cudnn` and there is no
  mask (`attention_blhd`): `aten._scaled_dot_product_cudnn_attention` on the
  [B, L, H, D] tensors as they are (strided [B, H, L, D] views; with fusion, v straight
  out of the q/k/v product), so the kernel is certain to be cuDNN's under `torch.compile`
  and no `.contiguous()` copies of q/k/v or of the output are made. diffusers'
  `_native_cudnn` copies q, k, v to [B, H, L, D] and chooses the kernel through an
  `sdpa_kernel` context that the compiled graph has to honour. (On torch 2.11 with
  cuDNN 9.19 SDPA picks cuDNN on Hopper by itself, so diffusers' default runs the same
  kernel; what this saves is the copies: benchmarks/NOTES.md.)

Other backends, and masked calls, go through diffusers' attention dispatcher. Those
that take a key mask work for any batch; those that refuse masks (flash, sage) are
safe only with length grouping on (`llm_dit.accel.grouping`), which never hands
attention a mask. `"auto"` picks what the benchmark measured fastest on Hopper
(benchmarks/NOTES.md).
"""

from __future__ import annotations

import weakref

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_z_image import ZSingleStreamAttnProcessor
from torch import nn

from llm_dit.accel.fused import fused_projection
from llm_dit.accel.qk_kernel import kernel_handles, norms_supported, qk_norm_rope
from surgery.hooks import HookRegistry

MASKED_BACKENDS = ("native", "_native_cudnn", "_native_efficient", "_native_math", "flex")
UNMASKED_BACKENDS = ("_native_flash", "flash", "_flash_3", "sage")
AUTO = "auto"
HOPPER_BEST = "_native_cudnn"
PROCESSOR_TARGETS = ("layers", "noise_refiner")


def apply_rotary_real(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """x [B,L,H,D] rotated by complex64 freqs [B,L,D/2], as diffusers' complex product, in real arithmetic.

    Pairs (x[2k], x[2k+1]) = (a, b) times (c + i s) give (a c - b s, a s + b c):
    out = x * [c, c] + swap(x) * [-s, s], with swap(a, b) = (b, a).
    """
    cos_sin = torch.view_as_real(freqs_cis).unsqueeze(2)  # [B,L,1,D/2,2] float32: (c, s)
    cos = cos_sin[..., 0:1].expand(*cos_sin.shape[:-1], 2).flatten(-2)
    sin = torch.cat((-cos_sin[..., 1:2], cos_sin[..., 1:2]), dim=-1).flatten(-2)
    x32 = x.float()
    swapped = x32.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return (x32 * cos + swapped * sin).type_as(x)


def apply_rotary_complex(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """diffusers' RoPE (complex64 product), for the processor with `real_rope=False`."""
    with torch.autocast("cuda", enabled=False):
        rotated = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) * freqs_cis.unsqueeze(2)
        return torch.view_as_real(rotated).flatten(3).type_as(x)


def _backend_name(backend) -> str | None:
    return getattr(backend, "value", backend)


def attention_blhd(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
    backend=None, parallel_config=None, direct_cudnn: bool = True,
) -> torch.Tensor:
    """Attention over q, k, v [B, L, H, D] (any strides with a dense last dim) -> [B, L, H, D].

    cuDNN directly for `_native_cudnn` without a mask on CUDA (its output is laid out like
    q, so [B, L, H, D] comes back without a copy); everything else through diffusers' dispatcher.
    """
    if (direct_cudnn and attention_mask is None and parallel_config is None and query.is_cuda
            and _backend_name(backend) == HOPPER_BEST):
        out = torch.ops.aten._scaled_dot_product_cudnn_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), None, False
        )[0]
        return out.transpose(1, 2)
    return dispatch_attention_fn(
        query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
        backend=backend, parallel_config=parallel_config,
    )


class ZImageRealRopeProcessor(ZSingleStreamAttnProcessor):
    """diffusers' Z-Image attention, compile-friendly and fused; same call signature and results.

    - RoPE in real float32 arithmetic (`real_rope=False`: diffusers' complex product);
    - q/k/v as one GEMM when `attn` is marked for fusion (`llm_dit.accel.fused`);
    - cuDNN called directly for `_native_cudnn` without a mask (`attention_blhd`;
      `direct_cudnn=False`: through diffusers' dispatcher, as v1 did);
    - on CUDA, q/k RMSNorm + RoPE as one Triton kernel (`llm_dit.accel.qk_kernel`;
      `qk_kernel=False`: the separate norm and rotation).
    """

    def __init__(self, real_rope: bool = True, direct_cudnn: bool = True, qk_kernel: bool = True) -> None:
        super().__init__()
        self.real_rope = real_rope
        self.direct_cudnn = direct_cudnn
        self.qk_kernel = qk_kernel

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        freqs_cis: torch.Tensor | None = None,
    ) -> torch.Tensor:
        qkv = fused_projection(attn, hidden_states)
        if qkv is not None:
            query, key, value = qkv.unflatten(-1, (3, attn.heads, -1)).unbind(-3)
        else:
            query = attn.to_q(hidden_states).unflatten(-1, (attn.heads, -1))
            key = attn.to_k(hidden_states).unflatten(-1, (attn.heads, -1))
            value = attn.to_v(hidden_states).unflatten(-1, (attn.heads, -1))
        if (self.qk_kernel and freqs_cis is not None and norms_supported(attn.norm_q, attn.norm_k)
                and kernel_handles(query, key, freqs_cis)):
            query, key = qk_norm_rope(query, key, attn.norm_q, attn.norm_k, freqs_cis)
        else:
            if attn.norm_q is not None:
                query = attn.norm_q(query)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            if freqs_cis is not None:
                rotate = apply_rotary_real if self.real_rope else apply_rotary_complex
                query = rotate(query, freqs_cis)
                key = rotate(key, freqs_cis)
        if attention_mask is not None and attention_mask.ndim == 2:
            attention_mask = attention_mask[:, None, None, :]
        out = attention_blhd(query, key, value, attention_mask, self._attention_backend, self._parallel_config,
                             self.direct_cudnn)
        out = attn.to_out[0](out.flatten(2, 3).to(query.dtype))
        if len(attn.to_out) > 1:
            out = attn.to_out[1](out)
        return out


def install_real_rope(
    transformer: nn.Module, targets: tuple[str, ...] = PROCESSOR_TARGETS, *, real_rope: bool = True,
    direct_cudnn: bool = True, qk_kernel: bool = True, registry: HookRegistry | None = None,
) -> int:
    """Give the attention of `targets`' blocks llm-dit's processor, keeping each one's backend.

    Through `registry` (a new "accel" one if None): undoing it gives each attention its old processor."""
    registry = registry if registry is not None else HookRegistry("accel")
    count = 0
    for target in targets:
        for block in getattr(transformer, target):
            old = block.attention.processor
            new = ZImageRealRopeProcessor(real_rope=real_rope, direct_cudnn=direct_cudnn, qk_kernel=qk_kernel)
            new._attention_backend = getattr(old, "_attention_backend", None)
            new._parallel_config = getattr(old, "_parallel_config", None)
            registry.set_attribute(block.attention, "processor", new, name="attention processor")
            count += 1
    return count


def resolve_backend(name: str | None, device: torch.device | str | None = None) -> str | None:
    """None keeps diffusers' default; "auto" -> cuDNN attention on compute capability 9.x, else the default."""
    if name != AUTO:
        return name
    if torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] == 9:
        return HOPPER_BEST
    return None


def set_attention_backend(
    transformer: nn.Module, name: str | None, grouped: bool, registry: HookRegistry | None = None
) -> str | None:
    """Set every attention processor of `transformer` to backend `name`; returns what was set.

    Through `registry` (a new "accel" one if None): undoing it gives each processor its old backend."""
    name = resolve_backend(name)
    if name is None:
        return None
    known = MASKED_BACKENDS + UNMASKED_BACKENDS
    if name not in known:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(known)}, 'auto' or None")
    if name in UNMASKED_BACKENDS and not grouped:
        raise ValueError(
            f"attention backend {name!r} cannot take the key mask that mixed-length batches (CFG, several "
            f"prompts) need; keep length grouping on, or choose one of {', '.join(MASKED_BACKENDS)}"
        )
    processors = [m.processor for m in transformer.modules() if hasattr(m, "processor") and hasattr(m.processor, "_attention_backend")]
    previous = [(weakref.ref(p) if _weakrefable(p) else p, p._attention_backend) for p in processors]
    transformer.set_attention_backend(name)

    def undo() -> None:
        for ref, backend in previous:
            processor = ref() if isinstance(ref, weakref.ReferenceType) else ref
            if processor is not None:
                processor._attention_backend = backend

    (registry if registry is not None else HookRegistry("accel")).add_change(transformer, undo, name=f"attention backend {name}")
    return name


def _weakrefable(obj: object) -> bool:
    try:
        weakref.ref(obj)
    except TypeError:
        return False
    return True
