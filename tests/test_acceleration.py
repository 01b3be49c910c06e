"""Each speed option of llm_dit.accel is numerically the plain path (fp8: close to it), on the tiny model."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

from llm_dit.accel import (
    Float8Linear,
    ZImageRealRopeProcessor,
    accelerate,
    apply_rotary_real,
    attention_blhd,
    compile_blocks,
    convert_to_fp8,
    dequantize_rowwise,
    fused_bytes,
    has_length_grouping,
    install_fused_projections,
    install_length_grouping,
    install_real_rope,
    is_compiled,
    is_fused,
    length_groups,
    padded_caption_length,
    quantize_rowwise,
    refresh_fused,
    remove_fused_projections,
    remove_length_grouping,
    uncompile_blocks,
)
from llm_dit.models import build_tiny_components


@pytest.fixture()
def transformer():
    """A fresh tiny DiT per test: these tests modify it in place."""
    return build_tiny_components(seed=0).transformer


def dit_inputs(caption_lengths: list[int], seed: int = 0, size: int = 8):
    generator = torch.Generator().manual_seed(seed)
    x = [torch.randn(16, 1, size, size, generator=generator) for _ in caption_lengths]
    caps = [torch.randn(n, 32, generator=generator) for n in caption_lengths]
    t = torch.rand(len(caption_lengths), generator=generator)
    return x, t, caps


def run(transformer, x, t, caps) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack(transformer(x, t, caps, return_dict=False)[0])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# ----- length grouping -------------------------------------------------------------


def test_padded_caption_length_follows_zimage():
    assert [padded_caption_length(n) for n in (1, 32, 33, 64, 70)] == [32, 32, 64, 64, 96]


def test_length_groups_keep_first_seen_order():
    x, _, caps = dit_inputs([10, 40, 31, 64, 33])
    assert length_groups(x, caps) == [[0, 2], [1, 3, 4]]


def test_grouping_equals_the_masked_batch(transformer):
    """A CFG-like batch of mixed caption lengths: per-group unmasked calls == one masked call."""
    x, t, caps = dit_inputs([10, 45, 12, 70])
    masked = run(transformer, x, t, caps)
    install_length_grouping(transformer)
    grouped = run(transformer, x, t, caps)
    assert (grouped - masked).abs().max().item() < 1e-5
    alone = torch.cat([run(transformer, [x[i]], t[i : i + 1], [caps[i]]) for i in range(4)])
    assert (grouped - alone).abs().max().item() < 1e-5
    remove_length_grouping(transformer)
    assert "forward" not in transformer.__dict__


def test_grouping_keeps_return_dict_and_deepcopies(transformer):
    install_length_grouping(transformer)
    x, t, caps = dit_inputs([10, 45])
    with torch.no_grad():
        sample = transformer(x, t, caps).sample
    assert len(sample) == 2 and sample[0].shape == x[0].shape
    twin = copy.deepcopy(transformer)
    assert twin.forward.__self__ is twin


# ----- RoPE in real arithmetic ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_rope_is_the_complex_product(dtype):
    x = torch.randn(2, 50, 4, 32, dtype=dtype)
    freqs = torch.polar(torch.ones(2, 50, 16), torch.randn(2, 50, 16) * 10)
    complex_product = torch.view_as_real(
        torch.view_as_complex(x.float().unflatten(-1, (-1, 2))) * freqs.unsqueeze(2)
    ).flatten(3).type_as(x)
    assert torch.equal(apply_rotary_real(x, freqs), complex_product)


def test_real_rope_processor_leaves_the_dit_unchanged(transformer):
    case = dit_inputs([10, 45])
    reference = run(transformer, *case)
    assert install_real_rope(transformer) == 4
    assert isinstance(transformer.layers[0].attention.processor, ZImageRealRopeProcessor)
    assert not isinstance(transformer.context_refiner[0].attention.processor, ZImageRealRopeProcessor)
    assert (run(transformer, *case) - reference).abs().max().item() < 1e-6


# ----- fused projections (q/k/v, w1/w3) and the attention call -----------------------------


def fuse(transformer, **options) -> None:
    """What `accelerate(compile=True, fuse_projections=True)` installs, without compiling: llm-dit's processor and the fusions."""
    install_real_rope(transformer)
    install_fused_projections(transformer, **options)


def block_inputs(transformer, batch: int = 2, length: int = 64, seed: int = 0, masked: bool = False):
    """Random inputs of one modulated block: x, key mask, complex RoPE frequencies, adaLN input."""
    generator = torch.Generator().manual_seed(seed)
    dim, head_dim = transformer.config.dim, transformer.config.dim // transformer.config.n_heads
    x = torch.randn(batch, length, dim, generator=generator)
    freqs = torch.polar(torch.ones(batch, length, head_dim // 2), torch.randn(batch, length, head_dim // 2, generator=generator))
    mask = None
    if masked:
        mask = torch.ones(batch, length, dtype=torch.bool)
        mask[1:, length - 20:] = False
    return x, mask, freqs, torch.randn(batch, min(dim, 256), generator=generator)


def block_output(block, inputs) -> torch.Tensor:
    with torch.no_grad():
        return block(*inputs)


@pytest.mark.parametrize("masked", [False, True])
def test_fused_block_equals_the_diffusers_block(transformer, masked):
    """One block: diffusers' processor and separate linears vs llm-dit's (fused q/k/v and w1/w3, real RoPE)."""
    inputs = block_inputs(transformer, masked=masked)
    block = transformer.layers[0]
    reference = block_output(block, inputs)
    fuse(transformer)
    assert block_output(block, inputs).sub(reference).abs().max().item() < 1e-5
    assert is_fused(block.attention) and is_fused(block.feed_forward)
    assert transformer.layers[0].attention._llm_dit_fused_weight.shape == (3 * transformer.config.dim, transformer.config.dim)


def test_fused_dit_equals_plain_and_keeps_the_state_dict(transformer):
    case = dit_inputs([10, 45])
    reference = run(transformer, *case)
    state = {k: v.clone() for k, v in transformer.state_dict().items()}
    parameters = {name: p for name, p in transformer.named_parameters()}
    fuse(transformer)
    assert (run(transformer, *case) - reference).abs().max().item() < 1e-5
    after = transformer.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert {name: p for name, p in transformer.named_parameters()} == parameters  # the same Parameter objects
    config = transformer.config
    expected = 4 * (3 * config.dim * config.dim + 2 * config.dim * int(config.dim / 3 * 8)) * 4  # float32 bytes
    assert fused_bytes(transformer) == expected


@pytest.mark.parametrize("which", ["qkv", "ffn"])
def test_one_fusion_alone(transformer, which):
    case = dit_inputs([10, 45])
    reference = run(transformer, *case)
    fuse(transformer, qkv=which == "qkv", ffn=which == "ffn")
    assert (run(transformer, *case) - reference).abs().max().item() < 1e-5
    block = transformer.layers[0]
    assert is_fused(block.attention) == (which == "qkv") and is_fused(block.feed_forward) == (which == "ffn")


def test_fused_weights_follow_edits(transformer):
    """In-place edits, load_state_dict, .data reassignment and dtype casts all reach the fused GEMM."""
    inputs = block_inputs(transformer)
    block = transformer.layers[0]
    plain = copy.deepcopy(block)
    fuse(transformer)
    block_output(block, inputs)  # builds the cache
    edits = [
        lambda b: b.attention.to_k.weight.mul_(0.5),
        lambda b: b.feed_forward.w3.weight.add_(0.01),
        lambda b: b.load_state_dict({k: v * 1.1 for k, v in b.state_dict().items()}),
        lambda b: setattr(b.attention.to_v.weight, "data", b.attention.to_v.weight.data * -1),
    ]
    for edit in edits:
        with torch.no_grad():
            edit(block)
            edit(plain)
        assert block_output(block, inputs).sub(block_output(plain, inputs)).abs().max().item() < 1e-5
    with torch.no_grad():  # an edit that bypasses the version counter needs an explicit refresh
        block.feed_forward.w1.weight.data.mul_(2)
        plain.feed_forward.w1.weight.data.mul_(2)
    refresh_fused(block)
    assert block_output(block, inputs).sub(block_output(plain, inputs)).abs().max().item() < 1e-5
    block.double(), plain.double()
    double_inputs = tuple(t.double() if t is not None and t.is_floating_point() else t for t in inputs)
    assert block.attention._llm_dit_fused_weight.dtype == torch.float64  # the buffer moved with the module
    assert block_output(block, double_inputs).sub(block_output(plain, double_inputs)).abs().max().item() < 1e-10


def test_hooks_wrappers_and_gradients_run_the_separate_linears(transformer):
    inputs = block_inputs(transformer)
    block = transformer.layers[0]
    reference = block_output(block, inputs)
    fuse(transformer)
    seen = []
    handle = block.attention.to_q.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    assert block_output(block, inputs).sub(reference).abs().max().item() < 1e-5
    assert seen and not is_fused(block.attention)  # a probe on to_q sees its output: no fusion
    handle.remove()
    block_output(block, inputs)
    assert is_fused(block.attention)

    class Scaled(nn.Module):  # a wrapper in place of a linear (as LoRA puts there)
        def __init__(self, inner: nn.Linear) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return 2 * self.inner(x)

    original = block.feed_forward.w3
    block.feed_forward.w3 = Scaled(original)
    wrapped = block_output(block, inputs)
    assert not is_fused(block.feed_forward) and not torch.allclose(wrapped, reference)
    block.feed_forward.w3 = original

    block.requires_grad_(True)
    out = block(*inputs)
    assert not is_fused(block.attention) and not is_fused(block.feed_forward)
    out.square().mean().backward()
    assert block.attention.to_q.weight.grad is not None and block.feed_forward.w1.weight.grad is not None
    assert out.detach().sub(reference).abs().max().item() < 1e-5


def test_frozen_weights_with_grad_mode_on_still_backpropagate_to_inputs(transformer):
    """Adapter training runs frozen blocks with grad on: the fused path must pass gradients to x."""
    inputs = block_inputs(transformer)
    block = transformer.layers[0]
    plain = copy.deepcopy(block)
    fuse(transformer)
    with torch.inference_mode():
        block_output(block, inputs)  # cache built under inference mode
    x = inputs[0].clone().requires_grad_(True)
    x_plain = inputs[0].clone().requires_grad_(True)
    block(x, *inputs[1:]).sum().backward()
    plain(x_plain, *inputs[1:]).sum().backward()
    assert is_fused(block.attention)
    assert (x.grad - x_plain.grad).abs().max().item() < 1e-4


def test_remove_fused_projections(transformer):
    case = dit_inputs([10, 45])
    reference = run(transformer, *case)
    fuse(transformer)
    run(transformer, *case)
    assert remove_fused_projections(transformer) == 8
    assert fused_bytes(transformer) == 0 and "forward" not in transformer.layers[0].feed_forward.__dict__
    assert not any("_llm_dit" in name for name, _ in transformer.named_buffers())
    assert (run(transformer, *case) - reference).abs().max().item() < 1e-5


def test_fused_fp8_equals_separate_fp8(transformer):
    """Row-wise scales: the concatenated float8 weight is exactly the three (two) quantized weights."""
    case = dit_inputs([10, 45])
    convert_to_fp8(transformer)
    separate = run(transformer, *case)
    fuse(transformer)
    fused = run(transformer, *case)
    assert transformer.layers[0].attention._llm_dit_fused_weight.dtype == torch.uint8
    assert transformer.layers[0].attention._llm_dit_fused_scale.shape == (1, 3 * transformer.config.dim)
    assert (fused - separate).abs().max().item() < 1e-5


def test_accelerate_fuses_only_when_asked(transformer):
    assert accelerate(transformer, attention_backend="native").fused_projections == 0
    assert not isinstance(transformer.layers[0].attention.processor, ZImageRealRopeProcessor)
    assert accelerate(transformer, compile=True, compile_backend="eager").fused_projections == 0  # opt-in (+7.3 GiB)
    assert fused_bytes(transformer) == 0
    uncompile_blocks(transformer)
    with pytest.raises(ValueError, match="fuse_projections"):
        accelerate(transformer, fuse_projections="w1")
    acc = accelerate(transformer, fuse_projections="qkv")
    assert acc.fused_projections == 4 and isinstance(transformer.layers[0].attention.processor, ZImageRealRopeProcessor)
    assert not transformer.layers[0].attention.processor.real_rope  # eager: diffusers' complex RoPE


@pytest.mark.parametrize("real_rope", [True, False])
def test_processor_without_real_rope_is_diffusers(transformer, real_rope):
    inputs = block_inputs(transformer)
    reference = block_output(transformer.layers[1], inputs)
    install_real_rope(transformer, real_rope=real_rope)
    assert block_output(transformer.layers[1], inputs).sub(reference).abs().max().item() < 1e-5


def test_attention_blhd_takes_strided_views():
    """q, k, v as [B, L, H, D] views of one fused product (v not contiguous) -> plain SDPA's result."""
    torch.manual_seed(0)
    qkv = torch.randn(2, 50, 3, 4, 32)
    query, key, value = qkv.unbind(2)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)).transpose(1, 2)
    for backend in (None, "native"):
        out = attention_blhd(query, key, value, None, backend=backend)
        assert (out - expected).abs().max().item() < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (cuDNN attention)")
def test_direct_cudnn_attention_matches_sdpa():
    torch.manual_seed(0)
    qkv = torch.randn(2, 300, 3, 4, 128, device="cuda", dtype=torch.bfloat16)
    query, key, value = qkv.unbind(2)
    out = attention_blhd(query.contiguous(), key.contiguous(), value, None, backend="_native_cudnn")
    expected = torch.nn.functional.scaled_dot_product_attention(
        *(t.transpose(1, 2).float() for t in (query, key, value))).transpose(1, 2)
    assert relative_error(out, expected) < 1e-2
    assert out.is_contiguous()  # cuDNN wrote [B, L, H, D] memory (q's layout): flatten(2, 3) is free


# ----- regional compile --------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled_case():
    """One tiny DiT compiled (backend "eager": dynamo graph capture and guards, no code generation) and its eager outputs.

    Batch 1 and a batch > 1 warm it up; dynamo specializes sizes 0/1, and the noise
    refiner's frequencies are a view while the main layers' are not: at most 4 graphs.
    With the opt-in fused projections, the path with the most moving parts (cached weights
    read inside the graph, refreshed by the compiled block's eager wrapper).
    """
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    transformer = build_tiny_components(seed=0).transformer
    warmup = [dit_inputs([10]), dit_inputs([12, 20], seed=2)]
    later = [dit_inputs([40], seed=1), dit_inputs([100, 101, 99], seed=3), dit_inputs([33, 70], seed=4, size=12)]
    eager = [run(transformer, *case) for case in warmup + later]
    count = accelerate(transformer, compile=True, compile_backend="eager", fuse_projections=True).compiled_blocks
    compiled = [run(transformer, *case) for case in warmup]
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled += [run(transformer, *case) for case in later]
    return dict(transformer=transformer, count=count, eager=eager, compiled=compiled, graphs_after_warmup=graphs,
                graphs=torch._dynamo.utils.counters["stats"]["unique_graphs"])


def test_compiled_blocks_equal_eager(compiled_case):
    assert compiled_case["count"] == 4  # 2 layers + 2 noise-refiner blocks
    for compiled, eager in zip(compiled_case["compiled"], compiled_case["eager"]):
        assert (compiled - eager).abs().max().item() < 1e-5


def test_new_caption_lengths_batches_and_sizes_never_recompile(compiled_case):
    assert compiled_case["graphs_after_warmup"] <= 4
    assert compiled_case["graphs"] == compiled_case["graphs_after_warmup"]


def test_compiled_block_copies_run_their_own_weights(compiled_case):
    """Surgery duplicates blocks with deepcopy: a copy must not call the original's forward."""
    block = compiled_case["transformer"].layers[0]
    assert is_compiled(block)
    twin = copy.deepcopy(block)
    with torch.no_grad():
        twin.feed_forward.w2.weight.zero_()
        twin.attention.to_out[0].weight.zero_()
    args = (torch.randn(2, 64, 64), None, torch.polar(torch.ones(2, 64, 16), torch.randn(2, 64, 16)), torch.randn(2, 64))
    with torch.no_grad():
        assert torch.equal(twin(*args), args[0])  # zeroed outputs: identity, as identity-init relies on
        assert not torch.equal(block(*args), args[0])


def test_compiled_copies_rebuild_their_fused_weights(compiled_case):
    """A copy edited in its fused sources (q, w1) runs the edited weights, compiled, without a new graph."""
    block = compiled_case["transformer"].layers[0]
    args = (torch.randn(2, 64, 64), None, torch.polar(torch.ones(2, 64, 16), torch.randn(2, 64, 16)), torch.randn(2, 64))
    twin = copy.deepcopy(block)
    with torch.no_grad():
        twin.attention.to_q.weight.mul_(-1.5)
        twin.feed_forward.w1.weight.add_(0.02)
    eager_twin = copy.deepcopy(twin)
    uncompile_blocks(nn.ModuleList([eager_twin]))
    remove_fused_projections(eager_twin)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch.no_grad():
        assert is_compiled(twin)
        assert (twin(*args) - eager_twin(*args)).abs().max().item() < 1e-5
        assert not torch.allclose(twin(*args), block(*args))
    assert is_fused(twin.attention) and twin.attention._llm_dit_fused_weight.data_ptr() != block.attention._llm_dit_fused_weight.data_ptr()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def test_forward_hooks_still_fire_on_compiled_blocks(compiled_case):
    transformer = compiled_case["transformer"]
    seen = []
    handle = transformer.layers[1].register_forward_hook(lambda module, args, out: seen.append(out.shape))
    try:
        run(transformer, *dit_inputs([10, 12]))
    finally:
        handle.remove()
    assert len(seen) == 1


def test_uncompile_restores_eager_blocks():
    transformer = build_tiny_components(seed=0).transformer
    assert compile_blocks(transformer, backend="aot_eager") == 4
    assert uncompile_blocks(transformer) == 4
    assert not any(is_compiled(block) for block in transformer.layers)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LLM_DIT_INDUCTOR_TESTS") != "1", reason="Inductor's C++ build takes ~90 s on 2 cores; LLM_DIT_INDUCTOR_TESTS=1 runs it")
@pytest.mark.parametrize("fuse", [False, True])
def test_inductor_compile_equals_eager(transformer, fuse):
    torch._dynamo.reset()
    case = dit_inputs([20, 50])
    eager = run(transformer, *case)
    accelerate(transformer, compile=True, fuse_projections=fuse)
    assert (run(transformer, *case) - eager).abs().max().item() < 1e-4


# ----- fp8 --------------------------------------------------------------------------------


def test_rowwise_quantization_round_trip():
    x = torch.randn(64, 128) * torch.logspace(-3, 2, 64)[:, None]  # rows of very different scale
    q, scale = quantize_rowwise(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (64, 1)
    assert q.float().abs().amax(dim=1).sub(448).abs().max() == 0  # each row uses the full range
    back = dequantize_rowwise(q, scale)
    row_error = (back - x).norm(dim=1) / x.norm(dim=1)
    assert row_error.max() < 0.04  # e4m3: 3 mantissa bits, per-row scale keeps small rows precise
    assert torch.all((back - x).abs() <= x.abs() * 2**-4 + scale * 2**-9 + 1e-30)


def test_float8_linear_matches_dequantized_product():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=True)
    fp8 = Float8Linear.from_linear(linear)
    x = torch.randn(3, 5, 64)
    q, scale = quantize_rowwise(x.reshape(-1, 64))
    expected = (dequantize_rowwise(q, scale) @ fp8.dequantized_weight().t() + linear.bias).reshape(3, 5, 48)
    assert torch.allclose(fp8(x), expected, atol=1e-5)
    assert relative_error(fp8(x), linear(x)) < 0.05


def test_float8_buffers_survive_dtype_casts():
    fp8 = Float8Linear.from_linear(nn.Linear(32, 16, bias=False))
    before = fp8.weight_fp8.clone(), fp8.weight_scale.clone()
    fp8.to(torch.bfloat16)
    assert torch.equal(fp8.weight_fp8.view(torch.uint8), before[0].view(torch.uint8))
    assert fp8.weight_scale.dtype == torch.float32 and torch.equal(fp8.weight_scale, before[1])


def test_fp8_dit_stays_close_to_full_precision(transformer):
    case = dit_inputs([10, 45])
    reference = run(transformer, *case)
    restore = convert_to_fp8(transformer, keep_originals=True)
    converted = sum(isinstance(m, Float8Linear) for m in transformer.modules())
    assert converted == 7 * 4  # 7 linears in each of 2 layers + 2 noise-refiner blocks
    assert all(not isinstance(m, Float8Linear) for m in transformer.context_refiner.modules())
    assert relative_error(run(transformer, *case), reference) < 0.1
    restore()
    assert torch.equal(run(transformer, *case), reference)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9), reason="needs fp8 tensor cores")
def test_scaled_mm_kernel_matches_emulation():
    torch.manual_seed(0)
    linear = nn.Linear(256, 512, bias=False, device="cuda", dtype=torch.bfloat16)
    fp8 = Float8Linear.from_linear(linear, fast_accum=False)
    x = torch.randn(4, 96, 256, device="cuda", dtype=torch.bfloat16)
    q, scale = quantize_rowwise(x.reshape(-1, 256))
    emulated = (dequantize_rowwise(q, scale) @ fp8.dequantized_weight().t()).reshape(4, 96, 512)
    assert relative_error(fp8(x), emulated) < 1e-2  # bf16 output rounding
    assert relative_error(fp8(x), linear(x)) < 0.05


# ----- through ZImageModule ------------------------------------------------------------------


def study_items(guidance: float = 0.0):
    from llm_dit.study import Study

    study = Study(name="accel", prompts=["A cat", "A red bicycle leaning on a wall at sunset"], seeds=[1, 2],
                  sampler={"steps": 2, "height": 32, "width": 32, "guidance_scale": guidance})
    return study


@pytest.mark.parametrize("guidance", [0.0, 4.0])
def test_module_options_keep_images(guidance):
    """Length grouping through the module (attention_backend='native' turns it on without
    compile): a mixed-prompt CFG batch gives the plain module's images."""
    from llm_dit.module import ZImageModule

    items = study_items(guidance).items()
    batch = [items[0], items[2]]  # two prompts of different padded lengths, one condition
    plain = ZImageModule(weights="tiny-random")
    plain.configure_model()
    fast = ZImageModule(weights="tiny-random", speed={"attention_backend": "native"})
    fast.configure_model()
    assert has_length_grouping(fast.transformer)
    assert not isinstance(fast.transformer.layers[0].attention.processor, ZImageRealRopeProcessor)  # eager: complex RoPE
    reference, *_ = plain.generate(batch)
    images, *_ = fast.generate(batch)
    assert (images - reference).abs().max().item() < 1e-5


def test_compiled_encoder_and_vae_keep_images():
    """compile=["encoder", "vae"] (Inductor): the same images as the eager module, new prompt
    lengths and batch sizes included; forward hooks (hidden-state capture) still fire."""
    from llm_dit.module import ZImageModule

    items = study_items().items()
    plain = ZImageModule(weights="tiny-random")
    plain.configure_model()
    fast = ZImageModule(weights="tiny-random", speed={"compile": ["encoder", "vae"]})
    fast.configure_model()
    assert all(is_compiled(layer) for layer in fast.text_encoder.layers) and is_compiled(fast.vae.decoder)
    assert not is_compiled(fast.transformer.layers[0])
    for batch in (items[:2], items[2:3]):  # prompt 1 at batch 2, then prompt 2 alone
        reference, *_ = plain.generate(batch)
        images, *_ = fast.generate(batch)
        assert (images - reference).abs().max().item() < 1e-5
    uncompile_blocks(fast.text_encoder), uncompile_blocks(fast.vae)
    assert not is_compiled(fast.vae.decoder) and not is_compiled(fast.text_encoder.layers[0])


def test_compile_parts_are_checked_before_loading():
    from llm_dit.accel import compile_parts
    from llm_dit.module import ZImageModule

    assert compile_parts(True) == ("dit", "encoder", "vae") and compile_parts(False) == ()
    assert compile_parts(["vae", "dit"]) == ("dit", "vae")
    with pytest.raises(ValueError, match="unknown part"):
        ZImageModule(weights="tiny-random", speed={"compile": ["dit", "refiner"]})


def test_module_fp8_is_close():
    from llm_dit.module import ZImageModule

    items = study_items().items()[:2]
    plain = ZImageModule(weights="tiny-random")
    plain.configure_model()
    fp8 = ZImageModule(weights="tiny-random", speed={"fp8": True})
    fp8.configure_model()
    reference, *_ = plain.generate(items)
    images, *_ = fp8.generate(items)
    assert 0 < (images - reference).abs().mean().item() < 0.05


def test_free_encoder_after_encoding_gives_the_same_images(tmp_path):
    import lightning as L

    from llm_dit.data import StudyDataModule
    from llm_dit.models.placement import is_freed
    from llm_dit.module import ZImageModule
    from llm_dit.module_settings import group_options

    class Collect(L.Callback):
        def __init__(self) -> None:
            self.images = []

        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            self.images.append(outputs.images)

    def predict(**options):
        module, collect = ZImageModule(weights="tiny-random", **group_options(**options)), Collect()
        trainer = L.Trainer(accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False, callbacks=[collect],
                            enable_progress_bar=False, enable_model_summary=False)
        trainer.predict(module, datamodule=StudyDataModule(study_items(4.0), batch_size=2), return_predictions=False)
        return module, torch.cat(collect.images)

    plain_module, plain = predict()
    freed_module, freed = predict(free_encoder_after_encoding=True)
    assert is_freed(freed_module.components.text_encoder) and "text_encoder" not in freed_module._modules
    assert not is_freed(plain_module.components.text_encoder)
    assert torch.equal(freed, plain)


# ----- the full-size random preset (benchmarks) ----------------------------------------------


def test_random_preset_has_zimage_turbo_shapes():
    """Built on the meta device: shapes and parameter counts, no memory."""
    from llm_dit.models.loading import resolve_weights
    from llm_dit.models.random_full import build_random_components

    assert resolve_weights("random-z-image-turbo").kind == "random"
    components = build_random_components(device="meta")
    counts = {name: info["parameters"] for name, info in components.describe().items()}
    assert counts == {"text_encoder": 4_022_468_096, "transformer": 6_154_908_736, "vae": 83_819_683}
    assert all(info["dtype"] == "torch.bfloat16" for info in components.describe().values())
    assert torch.get_default_dtype() == torch.float32
