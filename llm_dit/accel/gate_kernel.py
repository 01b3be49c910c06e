"""fp8 mode: SwiGLU gate and row-wise fp8 quantization of its output in one Triton pass.

In the fp8 DiT the feed-forward's down projection w2 takes silu(w1 x) * w3 x quantized
per token. Inductor fused that into one kernel, but as a two-pass reduction: one pass over
both 10240-wide bf16 rows for the row's amax, a second to scale and write (its cost per
forward: benchmarks/NOTES.md, v3 profile). Here one program holds a whole row in
registers, so w1 x and w3 x are read once.

The arithmetic follows the eager path step by step (`F.silu` rounded to the activation
dtype, times w3 x rounded, then `llm_dit.accel.fp8.quantize_rowwise`: amax in float32,
q = clamp(h * (448 / amax)) in e4m3, scale = amax / 448); only `exp` may differ in the
last float32 bit (bf16 noise). `gated_down_projection` is what the fp8 feed-forward calls.
"""

from __future__ import annotations

import torch

from llm_dit.accel.qk_kernel import INTERPRETING, triton

if triton is not None:
    import triton.language as tl

MAX_ROW = 16384  # one program per row, the row in registers


if triton is not None:

    @triton.jit
    def _silu_gate_quantize_kernel(
        x1_ptr, x3_ptr, q_ptr, scale_ptr, width, x1_row_stride, x3_row_stride, BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        inside = cols < width
        a = tl.load(x1_ptr + row * x1_row_stride + cols, mask=inside, other=0.0)
        b = tl.load(x3_ptr + row * x3_row_stride + cols, mask=inside, other=0.0)
        a32 = a.to(tl.float32)
        gate = (a32 / (1.0 + tl.exp(-a32))).to(a.dtype)
        h = (gate.to(tl.float32) * b.to(tl.float32)).to(a.dtype).to(tl.float32)
        amax = tl.maximum(tl.max(tl.abs(h), axis=0), 1e-12)  # _MIN_AMAX
        q = tl.clamp(h * (448.0 / amax), -448.0, 448.0)  # FP8_MAX
        tl.store(q_ptr + row * width + cols, q.to(q_ptr.dtype.element_ty), mask=inside)
        tl.store(scale_ptr + row, amax / 448.0)


# An opaque custom op rather than a `triton_op`: Inductor (torch 2.11, Triton 3.6) failed to
# build this kernel inside its own compile pipeline (LLVM pass error), while Triton's JIT builds
# and runs it (69-73 us per 4160 x 10240 block on an H200 vs 129 us for Inductor's two-pass
# kernel). Inductor could not fuse anything into it anyway.
@torch.library.custom_op("llm_dit::silu_gate_quantize", mutates_args=())
def _silu_gate_quantize(x1: torch.Tensor, x3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, width = x1.shape
    q = torch.empty((rows, width), dtype=torch.float8_e4m3fn, device=x1.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=x1.device)
    block = triton.next_power_of_2(width)
    _silu_gate_quantize_kernel[(rows,)](
        x1, x3, q, scale, width, x1.stride(0), x3.stride(0), BLOCK=block, num_warps=8 if block >= 4096 else 4,
    )
    return q, scale


@_silu_gate_quantize.register_fake
def _(x1: torch.Tensor, x3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, width = x1.shape
    return x1.new_empty((rows, width), dtype=torch.float8_e4m3fn), x1.new_empty((rows, 1), dtype=torch.float32)


def reference_silu_gate_quantize(x1: torch.Tensor, x3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the eager fp8 feed-forward computes before its w2 GEMM: quantize_rowwise(silu(x1) * x3)."""
    from llm_dit.accel.fp8 import quantize_rowwise

    return quantize_rowwise(torch.nn.functional.silu(x1) * x3)


def kernel_handles(x1: torch.Tensor, x3: torch.Tensor) -> bool:
    """2-D [rows, width] activations with unit column stride, on CUDA (or under the interpreter)."""
    if triton is None or not (x1.is_cuda or INTERPRETING):
        return False
    return (
        x1.dim() == 2 and x1.shape == x3.shape and x1.dtype == x3.dtype and x1.dtype in (torch.bfloat16, torch.float16)
        and x1.stride(1) == 1 and x3.stride(1) == 1 and x1.shape[1] <= MAX_ROW
    )


def silu_gate_quantize(x1: torch.Tensor, x3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8 e4m3 [rows, width], float32 scale [rows, 1]) of silu(x1) * x3, in one pass."""
    return torch.ops.llm_dit.silu_gate_quantize(x1, x3)


def gated_down_projection(feed_forward: torch.nn.Module, x1: torch.Tensor, x3: torch.Tensor) -> torch.Tensor:
    """`feed_forward.w2(silu(x1) * x3)`; with an fp8 w2 (no hooks) on CUDA, gate + quantize in one kernel."""
    from llm_dit.accel.fp8 import Float8Linear, fp8_matmul

    w2 = feed_forward.w2
    width = x1.shape[-1]
    rows1, rows3 = x1.reshape(-1, width), x3.reshape(-1, width)
    if (type(w2) is Float8Linear and not (w2._forward_hooks or w2._forward_pre_hooks)
            and kernel_handles(rows1, rows3) and x1.is_cuda):
        q, scale = silu_gate_quantize(rows1, rows3)
        y = fp8_matmul(q, scale, w2.weight_fp8, w2.weight_scale, w2.bias, x1.dtype, w2.fast_accum)
        return y.reshape(*x1.shape[:-1], w2.out_features)
    return w2(feed_forward._forward_silu_gating(x1, x3))
