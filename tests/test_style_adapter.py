"""The `style_adapter` surgery: export -> apply at a scale, exact restore, refusal of another base.

Adapters here are made by attaching a TrainableAdapter and perturbing its
weights (what training would do, without the time), so every variant is covered
in a second or two; tests/test_fit.py applies a really fitted one through predict.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import surgery
from llm_dit.models import build_tiny_components
from llm_dit.training import AdapterConfig, TrainableAdapter, flow_matching_loss, load_adapter
from llm_dit.training.adapter_files import SPEC_NAME

VARIANTS = ("lora", "full", "extra_blocks")


pytestmark = pytest.mark.usefixtures("one_thread")


def inputs() -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    latents = [torch.randn(16, 1, 4, 4, generator=g) for _ in range(2)]
    return latents, torch.tensor([0.4, 0.8]), [torch.randn(n, 32, generator=g) for n in (7, 19)]


def run(transformer: nn.Module) -> list[torch.Tensor]:
    latents, t, caps = inputs()
    with torch.no_grad():
        return transformer(latents, t, caps, return_dict=False)[0]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def make_adapter(transformer: nn.Module, variant: str, folder) -> tuple[str, list[torch.Tensor]]:
    """Attach, perturb as training would, export, detach; returns (path, outputs with the adapter)."""
    adapter = TrainableAdapter(transformer, AdapterConfig(variant=variant, rank=4))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=g))
    tuned = run(transformer)
    path = adapter.export(folder / variant, {"weights": "tiny"})
    adapter.remove()
    return str(path), tuned


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_apply_scale_one_equals_trained_and_zero_equals_base(transformer, tmp_path, variant):
    before, base_out = state(transformer), run(transformer)
    path, tuned = make_adapter(transformer, variant, tmp_path)
    assert all(torch.equal(v, before[k]) for k, v in transformer.state_dict().items())  # training left the base alone

    with surgery.apply(transformer, [{"variant": "style_adapter", "path": path, "scale": 1.0}]):
        at_one = run(transformer)
    with surgery.apply(transformer, [{"variant": "style_adapter", "path": path, "scale": 0.0}]):
        at_zero = run(transformer)
    with surgery.apply(transformer, [{"variant": "style_adapter", "path": path, "scale": 0.5}]):
        at_half = run(transformer)

    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(at_one, tuned))
    assert not same(at_one, base_out)
    assert same(at_zero, base_out)
    assert not same(at_half, base_out) and not same(at_half, at_one)
    assert all(torch.equal(v, before[k]) for k, v in transformer.state_dict().items())
    assert set(transformer.state_dict()) == set(before)
    assert surgery.count_live_hooks() == 0


def test_adapter_file_holds_only_the_adapter(transformer, tmp_path):
    path, _ = make_adapter(transformer, "lora", tmp_path)
    spec, tensors = load_adapter(path)
    assert spec.variant == "lora" and spec.rank == 4 and spec.alpha == 4.0 and spec.base_blocks == 2
    assert tensors and all(".lora_A." in k or ".lora_B." in k for k in tensors)
    refiner_linears = 7 * 2  # q, k, v, out, w1, w2, w3 in each of 2 blocks
    assert len(tensors) == 2 * refiner_linears


def test_refuses_an_adapter_made_for_another_base_model(tmp_path, transformer):
    path, _ = make_adapter(transformer, "lora", tmp_path)
    spec, _ = load_adapter(path)
    other = build_tiny_components(seed=1).transformer
    with pytest.raises(ValueError, match="was made for base model") as error:
        surgery.apply(other, [{"variant": "style_adapter", "path": path}])
    from llm_dit.run_folder import model_fingerprint

    assert spec.base_fingerprint in str(error.value) and model_fingerprint(other) in str(error.value)
    assert surgery.count_live_hooks() == 0


def test_same_base_in_bfloat16_is_accepted(tmp_path, transformer):
    path, _ = make_adapter(transformer, "extra_blocks", tmp_path)
    bf16 = copy.deepcopy(transformer).to(torch.bfloat16)
    latents, t, caps = inputs()
    with surgery.apply(bf16, [{"variant": "style_adapter", "path": path}]), torch.no_grad():
        out = bf16([x.bfloat16() for x in latents], t, [c.bfloat16() for c in caps], return_dict=False)[0]
    assert all(torch.isfinite(o.float()).all() for o in out)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"path": "/no/such/adapter"}, "missing adapter.json"),
        ({"path": "PATH", "scale": "strong"}, "scale must be a finite number"),
        ({"path": "PATH", "target": "layers"}, "context_refiner only"),
        ({}, "needs option"),
    ],
)
def test_bad_specs_fail_at_config_time(tmp_path, transformer, spec, message):
    path, _ = make_adapter(transformer, "lora", tmp_path)
    spec = {k: (path if v == "PATH" else v) for k, v in spec.items()}
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        surgery.parse_specs([{"variant": "style_adapter", **spec}])


def test_conflicts_with_other_structural_refiner_surgery(tmp_path, transformer):
    path, _ = make_adapter(transformer, "lora", tmp_path)
    with pytest.raises(ValueError, match="conflicting surgery specs"):
        surgery.validate_specs([{"variant": "style_adapter", "path": path}, {"variant": "skip"}])


def test_foreign_json_is_refused(tmp_path, transformer):
    path, _ = make_adapter(transformer, "lora", tmp_path)
    (tmp_path / "lora" / SPEC_NAME).write_text('{"format": "something-else", "variant": "lora"}')
    with pytest.raises(ValueError, match="not an llm-dit style adapter"):
        surgery.parse_specs([{"variant": "style_adapter", "path": path}])


@pytest.mark.parametrize("variant", ["lora", "extra_blocks"])
def test_gradient_checkpointing_gives_the_same_gradients(transformer, variant):
    """Adapters are module swaps, not hooks: checkpoint recomputation sees the same modules."""
    x0 = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(2))
    sigma, caps = torch.tensor([0.3, 0.9]), inputs()[2]
    grads = []
    for checkpointing in (False, True):
        model = copy.deepcopy(transformer)
        torch.manual_seed(0)  # peft draws LoRA A from the global RNG
        adapter = TrainableAdapter(model, AdapterConfig(variant=variant, rank=4))
        with torch.no_grad():  # make LoRA B / zeroed projections non-zero so every weight gets a gradient
            for parameter in adapter.parameters():
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(parameter.numel())))
        if checkpointing:
            model.enable_gradient_checkpointing()
        flow_matching_loss(model, x0, noise, sigma, caps).backward()
        grads.append([p.grad.clone() for p in adapter.parameters()])
        assert all(p.grad is None for n, p in model.named_parameters() if all(p is not q for q in adapter.parameters()))
        adapter.remove()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
    assert surgery.count_live_hooks() == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpoint_export_matches_direct_export(transformer, tmp_path, variant):
    """A fit checkpoint stores the adapter under module names; export_checkpoint maps them back."""
    from llm_dit.training import export_checkpoint

    adapter = TrainableAdapter(transformer, AdapterConfig(variant=variant, rank=4))
    own = {id(p) for p in adapter.parameters()}
    state = {f"transformer.{n}": p.detach().clone() for n, p in transformer.named_parameters() if id(p) in own}
    torch.save({"state_dict": state, "style_adapter": adapter.spec().to_dict()}, tmp_path / "last.ckpt")
    direct = load_adapter(adapter.export(tmp_path / "direct"))[1]
    adapter.remove()
    from_checkpoint = load_adapter(export_checkpoint(tmp_path / "last.ckpt", tmp_path / "ckpt"))[1]
    assert set(from_checkpoint) == set(direct) and all(torch.equal(from_checkpoint[k], direct[k]) for k in direct)
