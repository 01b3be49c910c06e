"""One registry for every change to a model: speed options, encoder truncation, the refiner
cache, probes and surgery all show in `surgery.live_hooks()` and `surgery.remove_all` undoes
them in one call, leaving the same module objects, a bit-identical state dict and no hooks.

The oracle is the model as loaded: its module objects, state dict, instance attributes and
outputs, recorded before anything is applied.
"""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

import surgery
from llm_dit.accel import (
    Float8Linear,
    accelerate,
    compile_blocks,
    convert_to_fp8,
    install_fused_projections,
    install_length_grouping,
    install_real_rope,
    set_attention_backend,
)
from llm_dit.accel.refiner_cache import cache_context_refiner
from llm_dit.models import build_tiny_components

pytestmark = pytest.mark.usefixtures("one_thread")


def dit_inputs(caption_lengths: list[int], seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = [torch.randn(16, 1, 8, 8, generator=generator) for _ in caption_lengths]
    caps = [torch.randn(n, 32, generator=generator) for n in caption_lengths]
    return x, torch.full((len(caption_lengths),), 0.4), caps


def run(transformer: nn.Module, case) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack(transformer(*case, return_dict=False)[0])


def snapshot(model: nn.Module) -> dict:
    """What "the model as it was" means: module objects by name, classes, instance attributes
    (bound forwards, markers), buffers (persistent or not), processors, and the state dict."""
    return {
        "modules": [(name, id(m), type(m)) for name, m in model.named_modules()],
        "attributes": {name: sorted(k for k in m.__dict__ if not k.startswith("_") or k == "forward")
                       for name, m in model.named_modules()},
        "private": {name: sorted(k for k in m.__dict__ if k.startswith("_llm_dit")) for name, m in model.named_modules()},
        "buffers": [name for name, _ in model.named_buffers()],
        "processors": [id(getattr(m, "processor", None)) for m in model.modules()],
        "backends": [getattr(getattr(m, "processor", None), "_attention_backend", None) for m in model.modules()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        # transformers installs its own permanent output-capturing hooks the first time anything
        # asks a model for hidden states (diffusers' encode_prompt does): compare, don't demand zero.
        "hooks": {name: (list(m._forward_hooks.values()), list(m._forward_pre_hooks.values()))
                  for name, m in model.named_modules()},
    }


def assert_restored(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    for key in ("modules", "attributes", "private", "buffers", "processors", "backends"):
        assert after[key] == before[key], key
    assert list(after["state"]) == list(before["state"])
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])
    assert after["hooks"] == before["hooks"]
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert surgery.count_live_hooks(model) == 0


@pytest.fixture()
def transformer() -> nn.Module:
    return build_tiny_components(seed=0).transformer


def test_every_kind_of_change_is_listed_and_undone_by_one_call(transformer) -> None:
    case = dit_inputs([10, 45])
    expected, before = run(transformer, case), snapshot(transformer)
    registry = surgery.HookRegistry("speed")
    assert convert_to_fp8(transformer, keep_originals=True, registry=registry) is not None
    install_length_grouping(transformer, registry)
    install_real_rope(transformer, registry=registry)
    assert install_fused_projections(transformer, registry=registry) == 8
    set_attention_backend(transformer, "native", grouped=True, registry=registry)
    compile_blocks(transformer, backend="eager", registry=registry)
    handle = surgery.apply(transformer, [{"variant": "duplicate", "shared": False}, {"variant": "skip", "target": "noise_refiner"}])
    probes = surgery.record_block_io(transformer)
    probes.__enter__()
    cache = cache_context_refiner(transformer)
    cache.__enter__()
    changed = run(transformer, case)
    live = surgery.live_hooks(transformer)
    kinds = {entry.split(":", 1)[0] for entry in live}
    assert kinds == {"swap", "forward", "attribute", "buffer", "change", "forward_hook", "forward_pre_hook"}
    for name in ("speed/fp8", "speed/length_grouping", "speed/attention processor", "speed/fused:Attention",
                 "speed/compile:ZImageTransformerBlock", "speed/attention backend native", "surgery/duplicate(",
                 "record_block_io:context_refiner/", "cache:context_refiner/context_refiner"):
        assert any(name in entry for entry in live), name
    assert isinstance(transformer.layers[0].attention.to_q, Float8Linear) and not torch.equal(changed, expected)
    # One call, whoever made the changes (the contexts above were never exited). It also undoes the
    # changes on blocks that surgery had swapped out of the tree (the noise refiner's, under "skip").
    everything = surgery.live_hooks()
    assert len(everything) > len(live) and surgery.remove_all(transformer) == len(everything)
    assert_restored(transformer, before)
    assert surgery.live_hooks() == [] and len(registry) == 0 and len(handle.registry) == 0
    assert torch.equal(run(transformer, case), expected)
    cache.__exit__(None, None, None)
    probes.__exit__(None, None, None)  # a context exited after remove_all has nothing left to undo
    handle.remove()
    assert_restored(transformer, before)


def test_accelerate_keeps_its_changes_in_one_registry(transformer) -> None:
    case = dit_inputs([10, 45])
    expected, before = run(transformer, case), snapshot(transformer)
    result = accelerate(transformer, compile=True, compile_backend="eager", attention_backend="native",
                        fuse_projections=True, fp8=True, fp8_keep_originals=True)
    assert set(result.registry.entries()) <= {f"accel/{e.split('/', 1)[1]}" for e in result.registry.entries()}
    assert surgery.count_live_hooks(transformer) == len(result.registry) > 0
    assert "registry" not in result.to_dict()
    result.remove()
    assert_restored(transformer, before)
    assert torch.equal(run(transformer, case), expected)


def test_fp8_without_originals_is_listed_and_refuses_a_guessed_undo(transformer) -> None:
    assert convert_to_fp8(transformer) is None
    assert any("bf16 weights dropped" in entry for entry in surgery.live_hooks(transformer))
    with pytest.raises(RuntimeError, match="keep_originals=True"):
        surgery.remove_all(transformer)
    assert surgery.count_live_hooks(transformer) == 0  # the entry is gone; the model stays converted
    assert isinstance(transformer.layers[0].attention.to_q, Float8Linear)


def test_encoder_truncation_and_capture_hooks_are_registry_changes(tiny) -> None:
    from llm_dit.encoding.encoder import ZImageTextEncoder

    encoder = ZImageTextEncoder(tiny.text_encoder, tiny.tokenizer, padding="none")
    text_encoder = tiny.text_encoder
    before = snapshot(text_encoder)
    seen: list[list[str]] = []
    probe = text_encoder.embed_tokens.register_forward_hook(lambda m, a, o: seen.append(surgery.live_hooks(text_encoder)))
    try:
        reference = encoder.encode(["a red circle"], hidden_layer=-1)[0].embeddings
        encoder.encode(["a red circle"], hidden_layer=[0, 1, -2], layer_combine="mean")
    finally:
        probe.remove()
    assert seen[0] == []  # the full stack: nothing to change
    assert "swap:encoder/truncate layers to" in seen[1][0] and "swap:encoder/skip final norm" in seen[1][1]
    assert any(entry.startswith("forward_hook:encoder/hidden state") for entry in seen[1])
    assert_restored(text_encoder, before)
    assert torch.equal(encoder.encode(["a red circle"], hidden_layer=-1)[0].embeddings, reference)


def test_remove_all_undoes_only_the_given_model_and_matches_names(transformer) -> None:
    other = build_tiny_components(seed=1).transformer
    install_length_grouping(other)
    install_length_grouping(transformer)
    install_real_rope(transformer)
    assert surgery.remove_all(transformer, match="*/length_grouping") == 1
    assert surgery.live_hooks(transformer) == ["attribute:accel/attention processor"] * 4
    assert surgery.remove_all(transformer) == 4 and surgery.live_hooks() == ["forward:accel/length_grouping"]
    surgery.remove_all(other)
    assert surgery.count_live_hooks() == 0


def test_a_dropped_model_takes_its_entries_with_it() -> None:
    model = build_tiny_components(seed=2).transformer
    install_length_grouping(model)  # a bound forward: the model sits in a reference cycle
    assert surgery.count_live_hooks() == 1
    del model
    assert surgery.count_live_hooks() == 0


def test_registry_rebinds_an_earlier_instance_forward_on_undo() -> None:
    module = nn.Linear(2, 2)

    def first(self, x):
        return x + 1

    def second(self, x):
        return x + 2

    with surgery.HookRegistry("outer") as outer:
        outer.bind_forward(module, first, name="first")
        with surgery.HookRegistry("inner") as inner:
            inner.bind_forward(module, second, name="second")
            assert module(torch.zeros(2)).tolist() == [2.0, 2.0]
        assert isinstance(module.forward, types.MethodType) and module(torch.zeros(2)).tolist() == [1.0, 1.0]
    assert "forward" not in module.__dict__


def _entered(context):
    """Enter a context and keep it (a dropped generator context would close, and undo, at once)."""
    context.__enter__()
    return context


def _apply_refiner_cache(model: nn.Module):
    return _entered(cache_context_refiner(model))


def _apply_probes(model: nn.Module):
    return _entered(surgery.record_block_io(model))


def _apply_sub_block_probes(model: nn.Module):
    return _entered(surgery.record_activations(model, ["layers.*.attention", "cap_embedder"]))


# Each change alone, left in place (contexts entered and never exited), then one remove_all.
EACH_CHANGE = {
    "length_grouping": lambda m: install_length_grouping(m),
    "compile": lambda m: compile_blocks(m, backend="eager"),
    "fused_projections": lambda m: install_fused_projections(m),
    "fp8": lambda m: convert_to_fp8(m, keep_originals=True),
    "real_rope_processor": lambda m: install_real_rope(m),
    "attention_backend": lambda m: set_attention_backend(m, "native", grouped=False),
    "refiner_cache": _apply_refiner_cache,
    "block_probes": _apply_probes,
    "sub_block_probes": _apply_sub_block_probes,
    "surgery_skip": lambda m: surgery.apply(m, [{"variant": "skip"}]),
    "surgery_identity_init": lambda m: surgery.apply(m, [{"variant": "identity_init", "target": "layers"}]),
    "surgery_duplicate": lambda m: surgery.apply(m, [{"variant": "duplicate", "shared": False}]),
}


@pytest.mark.parametrize("change", list(EACH_CHANGE))
def test_each_change_alone_is_listed_and_restored_exactly(transformer, change: str) -> None:
    case = dit_inputs([10, 45])
    expected, before = run(transformer, case), snapshot(transformer)
    kept = EACH_CHANGE[change](transformer)  # noqa: F841 - holds an entered context open
    run(transformer, case)
    live = surgery.live_hooks(transformer)
    assert live, f"{change} left no entry in live_hooks()"
    assert surgery.remove_all(transformer) >= len(live)
    assert_restored(transformer, before)
    assert surgery.live_hooks() == []
    assert torch.equal(run(transformer, case), expected)


def test_a_failing_accelerate_leaves_nothing_behind(transformer) -> None:
    before = snapshot(transformer)
    with pytest.raises(ValueError, match="unknown attention backend 'fastest'"):
        accelerate(transformer, fuse_projections=True, attention_backend="fastest")  # fails after grouping, rope, fusion
    assert_restored(transformer, before)
