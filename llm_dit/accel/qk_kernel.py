"""One Triton kernel for the DiT's q/k RMSNorm + rotary embedding (CUDA, bf16/fp16).

Per attention call, diffusers normalizes q and k per head (RMSNorm with a weight) and
rotates them (RoPE). Under `torch.compile` that was two Inductor kernels per block at
~49 us each for 32 MB in + 32 MB out, i.e. ~1.3 TB/s on a card that streams ~3-4 TB/s
(H200 v2/v3 profiles, benchmarks/NOTES.md). This kernel reads q, k and the rotation
once and writes both results in one pass, with head-dim pairs (x[2i], x[2i+1]) split
in registers instead of the `flip`/`cat` of the real-arithmetic RoPE.

Arithmetic follows the eager path step by step: variance in float32, x * rsqrt(var+eps)
rounded to the weight's dtype, times the weight (rounded), then the rotation in float32
and one final rounding; only the order of the float32 sum of squares and fused
multiply-adds may differ (last-bit, bf16 noise).

`qk_norm_rope` is a `torch.library.triton_op`, so `torch.compile(fullgraph=True)` sees
through it (shape-generic, no graph break); on CPU, or for shapes it does not handle
(`kernel_handles`), the attention processor keeps the separate norm and rotation. Tests
run the kernel itself on the CPU under Triton's interpreter (`TRITON_INTERPRET=1`).
"""

from __future__ import annotations

import os

import torch
from diffusers.models.normalization import RMSNorm

try:  # Triton ships with CUDA builds of torch; CPU-only installs use the reference path.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on installs without triton
    triton = None

ROWS_PER_PROGRAM = 16
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter (tests)


if triton is not None:

    @triton.jit
    def _qk_norm_rope_kernel(
        q_ptr, k_ptr, q_out_ptr, k_out_ptr, q_weight_ptr, k_weight_ptr, freqs_ptr,
        rows, heads, q_row_stride, k_row_stride, freqs_row_stride, eps,
        HEAD_DIM: tl.constexpr, ROWS: tl.constexpr,
    ):
        # A "row" is one (batch, token, head) vector of HEAD_DIM; rows are laid out as
        # [B*L, H] with a row stride per token and HEAD_DIM contiguous within a head.
        HALF: tl.constexpr = HEAD_DIM // 2
        row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        valid = row < rows
        token = row // heads
        head = row % heads
        dims = tl.arange(0, HEAD_DIM)
        pairs = tl.arange(0, HALF)

        freqs = freqs_ptr + token[:, None] * freqs_row_stride + pairs[None, :] * 2
        cos = tl.load(freqs, mask=valid[:, None], other=0.0)
        sin = tl.load(freqs + 1, mask=valid[:, None], other=0.0)

        for which in tl.static_range(2):
            if which == 0:
                src, dst, w_ptr, stride = q_ptr, q_out_ptr, q_weight_ptr, q_row_stride
            else:
                src, dst, w_ptr, stride = k_ptr, k_out_ptr, k_weight_ptr, k_row_stride
            offsets = token[:, None] * stride + head[:, None] * HEAD_DIM + dims[None, :]
            x = tl.load(src + offsets, mask=valid[:, None], other=0.0)
            x32 = x.to(tl.float32)
            variance = tl.sum(x32 * x32, axis=1) / HEAD_DIM
            scaled = (x32 * tl.rsqrt(variance + eps)[:, None]).to(x.dtype)
            weight = tl.load(w_ptr + dims)
            normed = (scaled.to(tl.float32) * weight.to(tl.float32)[None, :]).to(x.dtype).to(tl.float32)
            even, odd = tl.split(tl.reshape(normed, (ROWS, HALF, 2)))
            out_even = even * cos - odd * sin
            out_odd = even * sin + odd * cos
            out = tl.reshape(tl.join(out_even, out_odd), (ROWS, HEAD_DIM))
            out_offsets = row[:, None] * HEAD_DIM + dims[None, :]
            tl.store(dst + out_offsets, out.to(x.dtype), mask=valid[:, None])

    @torch.library.triton_op("llm_dit::qk_norm_rope", mutates_args=())
    def _qk_norm_rope(
        query: torch.Tensor, key: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
        freqs: torch.Tensor, eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length, heads, head_dim = query.shape
        q_out = torch.empty((batch, length, heads, head_dim), dtype=query.dtype, device=query.device)
        k_out = torch.empty_like(q_out)
        rows = batch * length * heads
        grid = (triton.cdiv(rows, ROWS_PER_PROGRAM),)
        torch.library.wrap_triton(_qk_norm_rope_kernel)[grid](
            query, key, q_out, k_out, q_weight, k_weight, freqs,
            rows, heads, query.stride(1), key.stride(1), freqs.stride(0), eps,
            HEAD_DIM=head_dim, ROWS=ROWS_PER_PROGRAM,
        )
        return q_out, k_out


def kernel_handles(query: torch.Tensor, key: torch.Tensor, freqs_cis: torch.Tensor) -> bool:
    """Whether `qk_norm_rope` can take these tensors (else use the reference path)."""
    if triton is None or not (query.is_cuda or INTERPRETING):
        return False
    batch, length, heads, head_dim = query.shape
    return (
        key.shape == query.shape and query.dtype in (torch.bfloat16, torch.float16) and key.dtype == query.dtype
        and head_dim in (16, 32, 64, 128, 256) and query.stride(-1) == 1 and key.stride(-1) == 1
        and query.stride(2) == head_dim and key.stride(2) == head_dim
        and query.stride(0) == length * query.stride(1) and key.stride(0) == length * key.stride(1)
        and freqs_cis.shape == (batch, length, head_dim // 2) and freqs_cis.dtype == torch.complex64
    )


def qk_norm_rope(
    query: torch.Tensor, key: torch.Tensor, q_norm: torch.nn.Module, k_norm: torch.nn.Module, freqs_cis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm (diffusers' `RMSNorm` with a weight) then RoPE on q and k [B, L, H, D] in one kernel."""
    freqs = torch.view_as_real(freqs_cis.contiguous()).flatten(0, 1)  # [B*L, D/2, 2] float32 (cos, sin)
    return torch.ops.llm_dit.qk_norm_rope(query, key, q_norm.weight, k_norm.weight, freqs, float(q_norm.eps))


def norms_supported(q_norm: torch.nn.Module | None, k_norm: torch.nn.Module | None) -> bool:
    """diffusers RMSNorm with a weight, no bias, one eps for both (what Z-Image uses)."""
    return (
        type(q_norm) is RMSNorm and type(k_norm) is RMSNorm and q_norm.weight is not None and k_norm.weight is not None
        and getattr(q_norm, "bias", None) is None and getattr(k_norm, "bias", None) is None and q_norm.eps == k_norm.eps
    )
