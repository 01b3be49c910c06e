"""surgery beyond Z-Image: skip, truncate, duplicate, identity_init and probes on diffusers'
Flux and SD3 transformers (built tiny from configs, random weights), restored exactly.

Oracles: nnsight 0.8's `.skip()` (an independent bypass) with the value each block class
really returns, `(encoder_hidden_states, hidden_states)`, and nnsight's saved block and
submodule inputs/outputs for the probes; a block list built by hand for duplicate.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from torch import nn

import surgery
from surgery.variants import BlockBypass

pytestmark = pytest.mark.usefixtures("one_thread")

B, S, T = 2, 16, 5


def tiny_flux() -> nn.Module:
    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=2, num_single_layers=3, attention_head_dim=8,
                                  num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8,
                                  axes_dims_rope=(2, 2, 4)).eval()


def tiny_sd3() -> nn.Module:
    torch.manual_seed(0)
    return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8,
                                 num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                 pooled_projection_dim=8, out_channels=4, pos_embed_max_size=8,
                                 dual_attention_layers=(0,)).eval()


def flux_inputs() -> dict:
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(B, S, 4, generator=g), encoder_hidden_states=torch.randn(B, T, 16, generator=g),
                pooled_projections=torch.randn(B, 8, generator=g), timestep=torch.tensor([0.5, 0.7]),
                img_ids=torch.zeros(S, 3), txt_ids=torch.zeros(T, 3), return_dict=False)


def sd3_inputs() -> dict:
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(B, 4, 8, 8, generator=g), encoder_hidden_states=torch.randn(B, T, 16, generator=g),
                pooled_projections=torch.randn(B, 8, generator=g), timestep=torch.tensor([0.5, 0.7]), return_dict=False)


# (model factory, inputs, target list, number of blocks in it)
CASES = {
    "flux-double": (tiny_flux, flux_inputs, "transformer_blocks", 2),
    "flux-single": (tiny_flux, flux_inputs, "single_transformer_blocks", 3),
    "sd3-joint": (tiny_sd3, sd3_inputs, "transformer_blocks", 3),
}
_MODELS: dict[Callable, nn.Module] = {}


@pytest.fixture(params=list(CASES), scope="module")
def case(request: pytest.FixtureRequest):
    factory, inputs, target, n_blocks = CASES[request.param]
    if factory not in _MODELS:
        _MODELS[factory] = factory()
    return _MODELS[factory], inputs(), target, n_blocks


def run(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs)[0]


def snapshot(model: nn.Module) -> tuple:
    return [(n, id(m), type(m)) for n, m in model.named_modules()], {k: v.clone() for k, v in model.state_dict().items()}


def assert_restored(model: nn.Module, before: tuple, expected: torch.Tensor, inputs: dict) -> None:
    structure, state = snapshot(model)
    assert structure == before[0]
    assert list(state) == list(before[1]) and all(torch.equal(state[k], before[1][k]) for k in state)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
    assert surgery.count_live_hooks(model) == 0
    assert torch.equal(run(model, inputs), expected)


def nnsight_skipping(model: nn.Module, inputs: dict, target: str, skipped: list[int]) -> torch.Tensor:
    """The output with blocks `skipped` of `target` bypassed by nnsight, each returning the pair it got."""
    from nnsight import NNsight

    traced = NNsight(copy.deepcopy(model))  # nnsight instruments the modules it wraps for good
    blocks = getattr(traced, target)
    with torch.no_grad(), traced.trace(**inputs):
        for i in skipped:
            block = blocks[i]
            kwargs = block.inputs[1]
            block.skip((kwargs["encoder_hidden_states"], kwargs["hidden_states"]))
        output = traced.output.save()
    return output[0]


def test_the_model_lists_its_block_lists(case) -> None:
    model, _, target, n_blocks = case
    assert surgery.block_counts(model)[target] == n_blocks
    assert surgery.block_kind(getattr(model, target)[0]).returns == ("encoder_hidden_states", "hidden_states")


@pytest.mark.parametrize(
    ("spec", "skipped"),
    [
        ({"variant": "skip"}, "all"),
        ({"variant": "skip_layers", "layers": [1]}, [1]),
        ({"variant": "truncate", "use_layers": 1}, "tail"),
    ],
    ids=["skip", "skip_layers", "truncate"],
)
def test_bypasses_match_nnsight_skip_and_restore(case, spec: dict, skipped) -> None:
    model, inputs, target, n_blocks = case
    expected, before = run(model, inputs), snapshot(model)
    indices = list(range(n_blocks)) if skipped == "all" else list(range(1, n_blocks)) if skipped == "tail" else skipped
    with surgery.apply(model, [{**spec, "target": target}]) as handle:
        assert [i for i, b in enumerate(handle.blocks(target)) if isinstance(b, BlockBypass)] == indices
        ours = run(model, inputs)
    assert torch.equal(ours, nnsight_skipping(model, inputs, target, indices))
    assert not torch.allclose(ours, expected, atol=1e-4)
    assert_restored(model, before, expected, inputs)


def test_identity_init_is_exactly_the_bypass(case) -> None:
    model, inputs, target, n_blocks = case
    expected, before = run(model, inputs), snapshot(model)
    originals = list(getattr(model, target))
    with surgery.apply(model, [{"variant": "identity_init", "target": target}]) as handle:
        copies = list(handle.blocks(target))
        identity = run(model, inputs)
    assert all(type(c) is type(o) and c is not o for c, o in zip(copies, originals))
    torch.testing.assert_close(identity, nnsight_skipping(model, inputs, target, list(range(n_blocks))), rtol=0, atol=1e-6)
    assert_restored(model, before, expected, inputs)


@pytest.mark.parametrize("shared", [True, False])
def test_duplicate_runs_each_block_twice_and_restores(case, shared: bool) -> None:
    model, inputs, target, n_blocks = case
    expected, before = run(model, inputs), snapshot(model)
    spec = {"variant": "duplicate", "target": target, "shared": shared}
    if isinstance(model, SD3Transformer2DModel):  # the last joint block returns no text stream for a second run
        with pytest.raises(ValueError, match=r"transformer_blocks.2 \(JointTransformerBlock\) returns None for encoder"):
            surgery.apply(model, [spec])
        assert_restored(model, before, expected, inputs)
        return
    with surgery.apply(model, [spec]):
        ours = run(model, inputs)
    by_hand = copy.deepcopy(model)  # oracle: the doubled list built with plain torch
    blocks = list(getattr(by_hand, target))
    setattr(by_hand, target, nn.ModuleList([b for block in blocks for b in (block, block)]))
    torch.testing.assert_close(ours, run(by_hand, inputs), rtol=0, atol=0)
    assert_restored(model, before, expected, inputs)


def test_block_probes_match_nnsight(case) -> None:
    from nnsight import NNsight

    model, inputs, target, n_blocks = case
    expected, before = run(model, inputs), snapshot(model)
    with surgery.record_block_io(model, target=target) as recorder:
        run(model, inputs)
    traced = NNsight(copy.deepcopy(model))
    saved = []
    with torch.no_grad(), traced.trace(**inputs):
        for i in range(n_blocks):
            block = getattr(traced, target)[i]
            saved.append((block.inputs[1]["hidden_states"].save(), block.output[1].save()))
    assert [r.index for r in recorder.records] == list(range(n_blocks))
    for record, (hidden_in, hidden_out) in zip(recorder.records, saved):
        assert torch.equal(record.input, hidden_in) and torch.equal(record.output, hidden_out)
    drift = surgery.embedding_drift(recorder)
    assert drift.names == [f"{target}.{i}" for i in range(n_blocks)] and drift.per_block.shape == (B, n_blocks)
    assert_restored(model, before, expected, inputs)


def test_sub_block_probes_match_nnsight(case) -> None:
    """Probe points below the block (attention, the final norm/projection) by a names filter."""
    from nnsight import NNsight

    model, inputs, target, _ = case
    expected, before = run(model, inputs), snapshot(model)
    with surgery.record_activations(model, [f"{target}.*.attn", "proj_out"]) as activations:
        run(model, inputs)
    assert activations.names[-1] == "proj_out" and all(n.endswith(".attn") for n in activations.names[:-1])
    traced = NNsight(copy.deepcopy(model))
    with torch.no_grad(), traced.trace(**inputs):
        attention = getattr(traced, target)[1].attn.output.save()
        final = traced.proj_out.output.save()
    ours = activations.outputs[f"{target}.1.attn"][0]
    for a, b in zip(ours if isinstance(ours, tuple) else (ours,), attention if isinstance(attention, tuple) else (attention,)):
        assert torch.equal(a, b)
    assert torch.equal(activations.outputs["proj_out"][0], final)
    assert_restored(model, before, expected, inputs)


def test_hook_points_filter_reaches_below_blocks(case) -> None:
    model, _, target, n_blocks = case
    overview = surgery.hook_points(model)
    assert [r.name for r in overview if r.kind == "block" and r.name.startswith(f"{target}.")] == [
        f"{target}.{i}" for i in range(n_blocks)]
    rows = surgery.hook_points(model, f"{target}.*.attn")
    assert [r.name for r in rows] == [f"{target}.{i}.attn" for i in range(n_blocks)] and {r.kind for r in rows} == {"module"}
    with pytest.raises(ValueError, match="matches 'nothing.here'"):
        with surgery.record_activations(model, "nothing.here"):
            pass


def test_a_nested_list_is_a_target_too() -> None:
    """Any dotted path to a ModuleList: bypass the attention's output projection of one Flux block
    (an unlisted class, so the bypass returns its first input), against nnsight's skip."""
    from nnsight import NNsight

    model, inputs = tiny_flux(), flux_inputs()
    expected, before = run(model, inputs), snapshot(model)
    target = "transformer_blocks.1.attn.to_out"
    assert surgery.block_counts(model, (target,))[target] == 2
    with surgery.apply(model, [{"variant": "skip_layers", "target": target, "layers": [0]}]):
        ours = run(model, inputs)
    traced = NNsight(copy.deepcopy(model))
    with torch.no_grad(), traced.trace(**inputs):
        projection = traced.transformer_blocks[1].attn.to_out[0]
        projection.skip(projection.input)
        theirs = traced.output.save()
    assert torch.equal(ours, theirs[0]) and not torch.allclose(ours, expected, atol=1e-4)
    assert_restored(model, before, expected, inputs)


def test_surgery_imports_nothing_of_llm_dit() -> None:
    """The generic package stands alone: no import of llm_dit anywhere in it (module or function
    level), and importing it loads none."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    package = Path(surgery.__file__).parent
    found = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {name}" for name in names if name.split(".")[0] == "llm_dit"]
    assert found == []
    code = "import sys, surgery; print(sorted(m for m in sys.modules if m.split('.')[0] == 'llm_dit'))"
    result = subprocess.run([sys.executable, "-c", code], cwd=package.parent, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
