"""Probe points below block level on the tiny Z-Image: attention, the caption embedder and the
final layer, selected by a names filter, recorded without changing anything, and listed by
`hook-points --filter`. Oracle: nnsight 0.8's saved module outputs on a copy of the model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import surgery

B = 2


def inputs() -> tuple:
    g = torch.Generator().manual_seed(1)
    latents = [torch.randn(16, 1, 4, 4, generator=g) for _ in range(B)]
    return latents, torch.tensor([0.3, 0.6]), [torch.randn(n, 32, generator=g) for n in (5, 40)]


def run(model: nn.Module) -> list[torch.Tensor]:
    with torch.no_grad():
        return model(*inputs(), return_dict=False)[0]


def test_sub_block_probes_match_nnsight_and_change_nothing(transformer) -> None:
    from nnsight import NNsight

    expected = run(transformer)
    state = {k: v.clone() for k, v in transformer.state_dict().items()}
    names = ["layers.*.attention", "cap_embedder", "all_final_layer.2-1", "context_refiner.0.feed_forward"]
    with surgery.record_activations(transformer, names) as activations:
        assert surgery.count_live_hooks(transformer) == 5
        out = run(transformer)
    assert activations.names == ["all_final_layer.2-1", "context_refiner.0.feed_forward", "cap_embedder",
                                 "layers.0.attention", "layers.1.attention"]  # registration order; fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(out, expected))
    traced = NNsight(copy.deepcopy(transformer))  # nnsight instruments the modules it wraps for good
    with torch.no_grad(), traced.trace(*inputs(), return_dict=False):  # in execution order, as nnsight needs
        caption_in = traced.cap_embedder.input.save()
        caption = traced.cap_embedder.output.save()
        ffn = traced.context_refiner[0].feed_forward.output.save()
        attention = traced.layers[1].attention.output.save()
        final = getattr(traced.all_final_layer, "2-1").output.save()
    assert torch.equal(activations.outputs["layers.1.attention"][0], attention)
    assert torch.equal(activations.outputs["cap_embedder"][0], caption)
    assert torch.equal(activations.inputs["cap_embedder"][0], caption_in)
    assert torch.equal(activations.outputs["context_refiner.0.feed_forward"][0], ffn)
    assert torch.equal(activations.outputs["all_final_layer.2-1"][0], final)
    assert all(len(calls) == 1 for calls in activations.outputs.values())  # one transformer call
    assert surgery.count_live_hooks() == 0
    assert sum(len(m._forward_hooks) for m in transformer.modules()) == 0
    assert all(torch.equal(v, state[k]) for k, v in transformer.state_dict().items())


def test_probes_see_the_blocks_surgery_put_in(transformer) -> None:
    """Inside surgery the filter matches the list as it is: duplicated blocks' parts by position."""
    with surgery.apply(transformer, [{"variant": "duplicate", "shared": False}]):
        with surgery.record_activations(transformer, "context_refiner.*.attention") as activations:
            run(transformer)
    assert activations.names == [f"context_refiner.{i}.attention" for i in range(4)]
    assert surgery.count_live_hooks() == 0


def test_names_filters() -> None:
    match = surgery.names_filter(["layers.*.attention", "cap_embedder"])
    assert match("layers.12.attention") and match("cap_embedder") and not match("layers.12.attention.to_q")
    assert surgery.names_filter(lambda name: name.endswith("w2"))("layers.0.feed_forward.w2")
    with pytest.raises(ValueError, match="names filter"):
        surgery.names_filter(3)


def test_hook_points_command_filters(capsys) -> None:
    from llm_dit.cli import main

    main(["hook-points", "--weights", "tiny-random", "--filter", "layers.*.attention", "--filter", "cap_embedder"])
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines()[2:]]
    assert names == ["cap_embedder", "layers.0.attention", "layers.1.attention"]
    main(["hook-points", "--weights", "tiny-random"])
    out = capsys.readouterr().out
    for name in ("cap_embedder", "all_final_layer.2-1", "context_refiner.1"):
        assert name in out
    assert "layers.0.attention" not in out
    with pytest.raises(SystemExit, match="no module matches nothing"):
        main(["hook-points", "--weights", "tiny-random", "--filter", "nothing"])
