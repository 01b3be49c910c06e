"""The Triton kernels of llm_dit.accel compute the plain path's arithmetic.

- q/k RMSNorm + RoPE (`qk_kernel`) against diffusers' RMSNorm and complex RoPE;
- fp8 mode's SwiGLU gate + row quantization (`gate_kernel`) against
  `quantize_rowwise(silu(x1) * x3)`, and the fp8 feed-forward using it.

On the CPU the kernels themselves run under Triton's interpreter (TRITON_INTERPRET=1, set
before Triton is imported, hence a subprocess). The interpreter emulates bfloat16 (by
truncation) and float8 (exact powers of two come out halved, subnormals a step off) differently from the GPU,
so the CPU checks use float16, where numpy rounds as the GPU does, check the fp8 scales
exactly and every other fp8 code; the CUDA tests check bfloat16 and fp8 on the real
thing, eager and under torch.compile.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

triton = pytest.importorskip("triton")

INTERPRETED_CHECKS = textwrap.dedent(
    """
    import torch
    from diffusers.models.normalization import RMSNorm

    from llm_dit.accel.attention import ZImageRealRopeProcessor, apply_rotary_complex, install_real_rope
    from llm_dit.accel.qk_kernel import kernel_handles, qk_norm_rope
    from llm_dit.models import build_tiny_components

    torch.manual_seed(0)
    B, L, H, D = 2, 37, 3, 64
    norms = [RMSNorm(D, eps=1e-5).half() for _ in range(2)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.copy_(torch.rand(D) + 0.5)
    angles = torch.rand(B, L, D // 2) * 6
    freqs = torch.polar(torch.ones_like(angles), angles)
    contiguous = [torch.randn(B, L, H * D).half().unflatten(-1, (H, D)) for _ in range(2)]
    fused = list(torch.randn(B, L, 3 * H * D).half().unflatten(-1, (3, H, D)).unbind(-3))[:2]  # strided views
    def one_ulp_at_most(got, expected):
        # The float32 sum of squares may add in another order than torch's mean: a last-bit
        # difference in the scale, now and then one float16 ulp in the output.
        ulp = torch.finfo(torch.float16).eps * expected.float().abs().clamp_min(2 ** -14)
        difference = (got.float() - expected.float()).abs()
        assert (difference <= ulp).all() and (difference > 0).float().mean() < 1e-3

    with torch.no_grad():
        for q, k in (contiguous, fused):
            assert kernel_handles(q, k, freqs)
            out_q, out_k = qk_norm_rope(q, k, norms[0], norms[1], freqs)
            one_ulp_at_most(out_q, apply_rotary_complex(norms[0](q), freqs))
            one_ulp_at_most(out_k, apply_rotary_complex(norms[1](k), freqs))
            assert out_q.is_contiguous() and out_q.shape == q.shape

    # The whole tiny DiT in float16: processor with the kernel == processor without it.
    transformer = build_tiny_components(seed=0).transformer.half()
    generator = torch.Generator().manual_seed(0)
    x = [torch.randn(16, 1, 8, 8, generator=generator).half() for _ in range(2)]
    caps = [torch.randn(n, 32, generator=generator).half() for n in (10, 40)]
    t = torch.tensor([0.3, 0.7])
    results = []
    for use_kernel in (False, True):
        install_real_rope(transformer, real_rope=False, qk_kernel=use_kernel)
        with torch.no_grad():
            results.append(torch.stack(transformer(x, t, caps, return_dict=False)[0]).float())
    assert isinstance(transformer.layers[0].attention.processor, ZImageRealRopeProcessor)
    error = ((results[1] - results[0]).norm() / results[0].norm()).item()
    assert 0 <= error < 1e-3, error  # float16 rounding through two refiner + two main blocks

    # fp8 mode's gate + row quantization, on the strided halves of a fused w1/w3 product.
    from llm_dit.accel import gate_kernel

    x1, x3 = (torch.randn(6, 600) * 3).half().chunk(2, dim=-1)
    assert gate_kernel.kernel_handles(x1, x3)
    q, scale = gate_kernel.silu_gate_quantize(x1, x3)
    expected_q, expected_scale = gate_kernel.reference_silu_gate_quantize(x1, x3)
    assert torch.equal(scale, expected_scale) and q.dtype == expected_q.dtype and q.shape == (6, 300)
    # The interpreter's own float8 encoding halves exact powers of two (128 -> 64, 2 -> 1) and may
    # be one step off in the subnormal range (< 2^-6); every other code, and the scales (the
    # float32 arithmetic before the cast), match.
    got, want = q.float()[q.float() != expected_q.float()], expected_q.float()[q.float() != expected_q.float()]
    halved = (torch.frexp(want)[0].abs() == 0.5) & (got == want / 2)
    subnormal = (want.abs() < 2 ** -6) & ((got - want).abs() <= 2 ** -9)
    assert (halved | subnormal).all() and got.numel() < 0.1 * q.numel()
    print("interpreted checks passed")
    """
)


def test_kernels_are_the_plain_arithmetic_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", INTERPRETED_CHECKS], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "interpreted checks passed" in done.stdout


def test_cpu_tensors_take_the_reference_path():
    from llm_dit.accel.qk_kernel import INTERPRETING, kernel_handles

    q = torch.randn(1, 8, 2, 64, dtype=torch.bfloat16)
    freqs = torch.polar(torch.ones(1, 8, 32), torch.rand(1, 8, 32))
    assert INTERPRETING or not kernel_handles(q, q, freqs)
    assert not kernel_handles(q.float(), q.float(), freqs)  # float32 is not a kernel dtype
    assert not kernel_handles(q[..., :48], q[..., :48], freqs[..., :24])  # head dim 48


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernel_matches_diffusers_in_bfloat16_eager_and_compiled():
    from diffusers.models.normalization import RMSNorm

    from llm_dit.accel.attention import apply_rotary_complex
    from llm_dit.accel.qk_kernel import qk_norm_rope

    torch.manual_seed(0)
    B, L, H, D = 2, 4160, 30, 128
    norms = [RMSNorm(D, eps=1e-5).to("cuda", torch.bfloat16) for _ in range(2)]
    q, k = (torch.randn(B, L, H * D, device="cuda", dtype=torch.bfloat16).unflatten(-1, (H, D)) for _ in range(2))
    freqs = torch.polar(torch.ones(B, L, D // 2, device="cuda"), torch.rand(B, L, D // 2, device="cuda") * 6)
    with torch.no_grad():
        expected = [apply_rotary_complex(n(x), freqs).float() for n, x in zip(norms, (q, k))]
        eager = qk_norm_rope(q, k, *norms, freqs)
        compiled = torch.compile(qk_norm_rope, fullgraph=True, dynamic=True)(q, k, *norms, freqs)
    for got in (eager, compiled):
        for a, b in zip(got, expected):
            assert ((a.float() - b).norm() / b.norm()).item() < 4e-3  # bf16 rounding
            assert (a.float() - b).abs().max().item() <= 2 ** -6 * b.abs().max().item()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9), reason="needs fp8 tensor cores")
def test_gate_kernel_and_fp8_feed_forward_match_the_plain_fp8_path():
    from torch import nn

    from llm_dit.accel.fp8 import convert_to_fp8
    from llm_dit.accel.gate_kernel import reference_silu_gate_quantize, silu_gate_quantize

    torch.manual_seed(0)
    x1, x3 = (torch.randn(4160, 2 * 10240, device="cuda", dtype=torch.bfloat16) * 2).chunk(2, dim=-1)
    with torch.no_grad():
        q, scale = silu_gate_quantize(x1, x3)
        expected_q, expected_scale = reference_silu_gate_quantize(x1, x3)
        assert torch.allclose(scale, expected_scale, rtol=1e-6)
        codes_differ = (q.float() != expected_q.float()).float().mean().item()
        assert codes_differ < 1e-3  # exp's last float32 bit, now and then another bf16 gate

    class Block(nn.Module):  # the shape convert_to_fp8 looks for: block.feed_forward.w1/w2/w3
        def __init__(self) -> None:
            super().__init__()
            from diffusers.models.transformers.transformer_z_image import FeedForward

            self.feed_forward = FeedForward(512, 1536)

    holder = nn.Module()
    holder.layers = nn.ModuleList([Block()]).to("cuda", torch.bfloat16)
    x = torch.randn(2, 300, 512, device="cuda", dtype=torch.bfloat16)
    restore = convert_to_fp8(holder, targets=("layers",), keep_originals=True)
    feed_forward = holder.layers[0].feed_forward
    with torch.no_grad():
        fused_pass = feed_forward(x)
        plain_fp8 = type(feed_forward).forward(feed_forward, x)
        compiled = torch.compile(feed_forward, fullgraph=True, dynamic=True)(x)
    restore()
    assert "forward" not in feed_forward.__dict__
    for got in (fused_pass, compiled):
        assert ((got.float() - plain_fp8.float()).norm() / plain_fp8.float().norm()).item() < 1e-2
