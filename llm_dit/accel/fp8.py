"""Opt-in FP8 linears for the DiT (H100/H200 tensor cores), row-wise scaled.

Weights are quantized once to float8 e4m3 with one scale per output channel;
activations are quantized on the fly with one scale per token (row), and the
product runs in `torch._scaled_mm` with those row-wise scales, accumulating in
fp32 (fast accumulation optional) and writing bf16. Under `torch.compile` the
activation quantization fuses into one pass over the activations.

Only the big linears of the modulated blocks (`layers`, `noise_refiner`:
q/k/v/out projections and the SwiGLU FFN, ~99% of the DiT's FLOPs) are
converted. The caption path (embedder, context refiner), the timestep
embedder, adaLN and the final layer stay bf16. FP8 changes images (a few
percent of a pixel level on average; the benchmark reports the difference), so
it is off unless asked for, and it is for generation only: its weights are
frozen float8 buffers that surgery cannot edit and training cannot update.

Off CUDA (tests), the same quantized operands are multiplied after
dequantizing in float32, which is what `_scaled_mm` computes up to
accumulation order.

The feed-forward's forward is bound to one that hands w2 its input already gated and
quantized by one Triton pass on CUDA (`llm_dit.accel.gate_kernel`).

Both the linear swaps and the bound feed-forwards go through a `surgery.HookRegistry`,
so they show in `surgery.live_hooks()`. With `keep_originals` the registry undoes them
exactly (the same bf16 linears come back); without it the bf16 weights are dropped to
save memory, and undoing the conversion says so instead of guessing them back.
"""

from __future__ import annotations

import types
from collections.abc import Iterable

import torch
from torch import nn

from surgery.hooks import HookRegistry

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
FP8_TARGETS = ("layers", "noise_refiner")
LINEAR_NAMES = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0",
                "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
_MIN_AMAX = 1e-12
CHANGE_NAME = "fp8"


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (float8 e4m3 [..., K], float32 scale [..., 1]) with x ~= q * scale.

    The scale maps each row's largest magnitude to e4m3's largest finite value,
    so no row saturates and small rows keep their relative precision.
    """
    x32 = x.float()
    amax = x32.abs().amax(dim=-1, keepdim=True).clamp(min=_MIN_AMAX)
    q = (x32 * (FP8_MAX / amax)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, amax / FP8_MAX


def dequantize_rowwise(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale


def fp8_linear(
    x: torch.Tensor, weight_fp8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None,
    fast_accum: bool = True,
) -> torch.Tensor:
    """`x @ W.T (+ b)` for W = weight_fp8 [N, K] (e4m3) * weight_scale [1, N], x quantized per token.

    Shared by `Float8Linear` and the fused q/k/v and w1/w3 projections (`llm_dit.accel.fused`):
    row-wise scales make a fused weight exactly the concatenation of its parts.
    """
    shape = x.shape
    q, scale = quantize_rowwise(x.reshape(-1, shape[-1]))
    y = fp8_matmul(q, scale, weight_fp8, weight_scale, bias, x.dtype, fast_accum)
    return y.reshape(*shape[:-1], weight_fp8.shape[0])


def fp8_matmul(
    q: torch.Tensor, scale: torch.Tensor, weight_fp8: torch.Tensor, weight_scale: torch.Tensor,
    bias: torch.Tensor | None, out_dtype: torch.dtype, fast_accum: bool = True,
) -> torch.Tensor:
    """(q * scale) [M, K] @ W.T (+ b) for an already quantized input; `_scaled_mm` on CUDA,
    the dequantized float32 product elsewhere."""
    if q.is_cuda:
        y = torch._scaled_mm(
            q, weight_fp8.t(), scale_a=scale, scale_b=weight_scale, out_dtype=out_dtype, use_fast_accum=fast_accum,
        )
    else:
        y = (dequantize_rowwise(q, scale) @ (weight_fp8.float() * weight_scale.t()).t()).to(out_dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y


class Float8Linear(nn.Module):
    """`y = x @ W.T (+ b)` with W in float8 (one scale per output row) and x quantized per token.

    The float8 weight and its float32 scales are kept as integer bit views, so
    `module.to(torch.bfloat16)` (Lightning precision plugins, `.half()`) cannot
    silently cast them; they still move with `.to(device)`.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, fast_accum: bool = True) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        q, scale = quantize_rowwise(weight.detach())
        self.register_buffer("weight_bits", q.view(torch.uint8), persistent=True)
        self.register_buffer("scale_bits", scale.reshape(1, -1).contiguous().view(torch.int32), persistent=True)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.fast_accum = fast_accum

    @classmethod
    def from_linear(cls, linear: nn.Linear, fast_accum: bool = True) -> Float8Linear:
        return cls(linear.weight, linear.bias, fast_accum)

    @property
    def weight_fp8(self) -> torch.Tensor:
        return self.weight_bits.view(FP8_DTYPE)

    @property
    def weight_scale(self) -> torch.Tensor:
        """float32 [1, out_features]."""
        return self.scale_bits.view(torch.float32)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_fp8.float() * self.weight_scale.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight_fp8, self.weight_scale, self.bias, self.fast_accum)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8=e4m3 rowwise, fast_accum={self.fast_accum}"


def _fp8_feed_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """diffusers' FeedForward, w2(silu(w1 x) * w3 x), with the gate and w2's input quantization in
    one kernel pass on CUDA (`llm_dit.accel.gate_kernel`); elsewhere the plain composition."""
    from llm_dit.accel.gate_kernel import gated_down_projection

    return gated_down_projection(self, self.w1(x), self.w3(x))


def fp8_supported(device: torch.device | str | None = None) -> bool:
    """float8 tensor-core matmuls need compute capability >= 8.9 (Ada, Hopper, Blackwell)."""
    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def convert_to_fp8(
    transformer: nn.Module, targets: Iterable[str] = FP8_TARGETS, *, fast_accum: bool = True, keep_originals: bool = False,
    registry: HookRegistry | None = None,
):
    """Swap the big linears of `targets` for Float8Linear in place, through `registry` (a new
    "accel" one if None).

    Returns a function that puts the original bf16 linears back when
    `keep_originals` (the benchmark compares both in one process; it keeps both
    copies in memory), else None (the bf16 weights are dropped, and undoing the
    registry's entry raises an error that says so).
    """
    registry = registry if registry is not None else HookRegistry("accel")
    before = len(registry)
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    gated: list[nn.Module] = []
    for target in targets:
        for block in getattr(transformer, target):
            feed_forward = getattr(block, "feed_forward", None)
            if feed_forward is not None and isinstance(feed_forward._modules.get("w2"), nn.Linear) \
                    and "forward" not in feed_forward.__dict__ and hasattr(feed_forward, "_forward_silu_gating"):
                gated.append(feed_forward)
            for name in LINEAR_NAMES:
                parent_name, _, child = name.rpartition(".")
                try:
                    parent = block.get_submodule(parent_name)
                except AttributeError:  # a block without this part (surgery replacements, tests)
                    continue
                linear = parent._modules.get(child)
                if not isinstance(linear, nn.Linear):
                    continue
                if linear.weight.is_cuda and (linear.in_features % 16 or linear.out_features % 16):
                    continue  # _scaled_mm needs K and N multiples of 16
                swaps.append((parent, child, Float8Linear.from_linear(linear, fast_accum)))
    if not swaps:
        raise ValueError(f"no linear layers to convert to fp8 in {list(targets)}")
    if keep_originals:
        for parent, child, replacement in swaps:
            registry.swap_child(parent, child, replacement, name=CHANGE_NAME)
    else:
        _swap_for_good(swaps, registry)
    for feed_forward in gated:
        if isinstance(feed_forward._modules.get("w2"), Float8Linear):
            registry.bind_forward(feed_forward, _fp8_feed_forward, name=CHANGE_NAME)
    if not keep_originals:
        return None

    def restore() -> None:
        """Undo this conversion's changes only (newest first)."""
        registry.remove_after(before)

    return restore


def _swap_for_good(swaps: list[tuple[nn.Module, str, nn.Module]], registry: HookRegistry) -> None:
    """Put the Float8Linears in without keeping the bf16 linears (they are freed), listed in the registry."""
    for parent, child, replacement in swaps:
        parent._modules[child] = replacement

    def undo() -> None:
        raise RuntimeError(
            "fp8: the bf16 linears were dropped when converting (keep_originals=False), so the conversion "
            "cannot be undone exactly; reload the model, or convert with keep_originals=True"
        )

    registry.add_change(swaps[0][0], undo, name=f"{CHANGE_NAME} (bf16 weights dropped: {len(swaps)} linears)")
