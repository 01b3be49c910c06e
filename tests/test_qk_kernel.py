"""The q/k RMSNorm + RoPE Triton kernel (llm_dit.accel.qk_kernel) is diffusers' arithmetic.

On the CPU the kernel itself runs under Triton's interpreter (TRITON_INTERPRET=1, set
before Triton is imported, hence a subprocess). The interpreter emulates bfloat16 with
truncation, so the CPU checks use float16, where numpy rounds as the GPU does (the
kernel matches diffusers to one ulp, in < 0.1 % of the elements); the CUDA test checks
bfloat16 on the real thing, eager and under torch.compile.
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
    print("interpreted checks passed")
    """
)


def test_kernel_is_diffusers_arithmetic_under_the_interpreter():
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
