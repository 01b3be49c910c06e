"""surgery/ on the tiny Z-Image: every variant's intended output, exact restore, nesting,
validation, probes, the refiner cache, skip-layer guidance and gradient checkpointing.

Independent oracles: nnsight 0.8's `.skip()` and plain torch hooks that return a
block's first input (the mechanism DESIGN.md verified) for skips; running the
captured refiner input through the blocks by hand for truncate/duplicate.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch
import yaml
from torch import nn

import surgery
from llm_dit.accel.refiner_cache import cache_context_refiner
from llm_dit.models.tiny import TINY_TRANSFORMER_CONFIG
from surgery.variants import BlockBypass

B = 2


# ----------------------------------------------------------------------------- fixtures / helpers


# base_transformer / transformer: tests/conftest.py


def make_inputs(lengths: tuple[int, int]) -> tuple:
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(B, 16, 1, 4, 4, generator=g)
    caps = [torch.randn(n, 32, generator=g) for n in lengths]
    return latents, torch.tensor([0.3, 0.3]), caps


@pytest.fixture
def inputs() -> tuple:
    """Latents, t, captions of different lengths: the refiner gets a mask."""
    return make_inputs((5, 40))


@pytest.fixture(params=["ragged", "equal"])
def any_inputs(request: pytest.FixtureRequest) -> tuple:
    """Both mask cases: "ragged" caption lengths give the refiner a mask, "equal" gives None."""
    return make_inputs((5, 40) if request.param == "ragged" else (32, 32))


def run(transformer: nn.Module, inputs: tuple, t: torch.Tensor | None = None) -> list[torch.Tensor]:
    latents, t0, caps = inputs
    with torch.no_grad():
        return transformer([latents[i] for i in range(B)], t0 if t is None else t, caps, return_dict=False)[0]


def assert_equal_outputs(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y), (x - y).abs().max()


def assert_different_outputs(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert any(not torch.allclose(x, y, atol=1e-4) for x, y in zip(a, b))


@contextmanager
def plain_hooks(pairs):
    """Plain torch hooks (not ours), removed on exit: the independent side of a comparison."""
    handles = [register(hook) for register, hook in pairs]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def capture_refiner_io(transformer: nn.Module, inputs: tuple, target: str = "context_refiner") -> dict:
    """Input args of the first block and output of the last block of `target` (as it is now)."""
    blocks = list(getattr(transformer, target)._modules.values())
    seen: dict = {}

    def first_input(module, args) -> None:  # returns None: a pre-hook's return value would replace the input
        seen.setdefault("args", args)

    def last_output(module, args, out) -> None:  # a shared block fires at each position: keep the last
        seen["out"] = out

    pairs = [(blocks[0].register_forward_pre_hook, first_input), (blocks[-1].register_forward_hook, last_output)]
    with plain_hooks(pairs):
        run(transformer, inputs)
    return seen


def by_hand(blocks: list[nn.Module], args: tuple) -> torch.Tensor:
    x, mask, freqs = args
    with torch.no_grad():
        for block in blocks:
            x = block(x, mask, freqs)
    return x


def count_calls(blocks: list[nn.Module]) -> tuple[dict[int, int], list]:
    counts = {id(b): 0 for b in blocks}

    def hook(module, args):
        counts[id(module)] += 1

    return counts, [(b.register_forward_pre_hook, hook) for b in blocks]


def state(transformer: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in transformer.state_dict().items()}


def structure(transformer: nn.Module) -> list[tuple[str, int, type]]:
    return [(name, id(module), type(module)) for name, module in transformer.named_modules()]


def torch_hook_count(transformer: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in transformer.modules())


ALL_SPECS = [
    {"variant": "skip"},
    {"variant": "truncate", "use_layers": 1},
    {"variant": "duplicate", "shared": True},
    {"variant": "duplicate", "shared": False},
    {"variant": "identity_init"},
    {"variant": "skip_layers", "layers": [0]},
    {"variant": "skip_layers", "target": "layers", "layers": [1]},
    {"variant": "identity_init", "target": "noise_refiner"},
    {"variant": "duplicate", "target": "layers", "shared": False},
]


# ----------------------------------------------------------------------------- specs


def test_specs_round_trip_through_dicts_and_yaml() -> None:
    text = """
    - {variant: skip}
    - {variant: truncate, use_layers: 1, target: noise_refiner}
    - {variant: duplicate, shared: true, target: siglip_refiner}
    - {variant: identity_init, target: layers}
    - {variant: skip_layers, layers: [0]}
    """
    specs = surgery.parse_specs(yaml.safe_load(text))
    assert [type(s).__name__ for s in specs] == ["BlockSkip", "BlockTruncate", "BlockDuplicate", "BlockIdentityInit", "BlockSkipLayers"]
    assert specs[0].target == "context_refiner" and specs[1].use_layers == 1 and specs[4].layers == [0]
    dicts = [s.to_dict() for s in specs]
    assert dicts[1] == {"variant": "truncate", "target": "noise_refiner", "use_layers": 1}
    assert surgery.parse_specs(yaml.safe_load(yaml.safe_dump(dicts))) == specs
    assert [surgery.SurgerySpec.from_dict(d) for d in dicts] == specs
    assert surgery.parse_specs(specs) == specs  # specs pass through
    assert surgery.BlockSkipLayers.from_dict({"layers": (2, 3), "target": "layers"}).layers == [2, 3]
    assert specs[1].label() == "truncate(noise_refiner, use_layers=1)"


@pytest.mark.parametrize(
    ("specs", "counts", "message"),
    [
        ([{"variant": "skpi"}], None, "unknown surgery variant 'skpi'; valid variants: duplicate, identity_init, skip, skip_layers"),
        ([{"target": "layers"}], None, "has no 'variant'"),
        ([{"variant": "skip", "target": "layers..1"}], None, "must be a dotted path to a block list"),
        ([{"variant": "skip", "target": "refiner"}], {"context_refiner": 2, "layers": 2}, "has no block list 'refiner' (valid targets: context_refiner, layers)"),
        ([{"variant": "skip", "layers": [0]}], None, "'skip' has no option(s) layers; its options: target"),
        ([{"variant": "truncate"}], None, "needs option(s) use_layers"),
        ([{"variant": "truncate", "use_layers": "1"}], None, "use_layers must be an integer, got '1'"),
        ([{"variant": "truncate", "use_layers": -1}], None, "use_layers must be >= 0"),
        ([{"variant": "duplicate", "shared": "yes"}], None, "shared must be true or false"),
        ([{"variant": "skip_layers", "layers": []}], None, "non-empty list"),
        ([{"variant": "skip_layers", "layers": [1, 1]}], None, "repeated"),
        ([{"variant": "skip_layers", "layers": [-1]}], None, "must be >= 0"),
        ([{"variant": "skip"}, {"variant": "duplicate"}], None, "conflicting surgery specs: skip(context_refiner) and duplicate"),
        ([{"variant": "skip_layers", "layers": [0]}, {"variant": "skip_layers", "layers": [1]}], None, "keep one per target"),
        ([{"variant": "skip_layers", "layers": [2]}], {"context_refiner": 2}, "layer index 2 out of range; context_refiner has 2 blocks, valid 0..1"),
        ([{"variant": "skip_layers", "target": "layers", "layers": [30]}], {"layers": 30}, "valid 0..29"),
        ([{"variant": "truncate", "use_layers": 3}], {"context_refiner": 2}, "valid 0..2"),
        ([{"variant": "skip", "target": "siglip_refiner"}], {"context_refiner": 2, "layers": 2}, "has no block list 'siglip_refiner'"),
        ({"variant": "skip"}, None, "a list of specs"),
        (["skip"], None, "must be a mapping"),
    ],
)
def test_validation_errors_are_one_line(specs, counts, message: str) -> None:
    with pytest.raises(ValueError) as error:
        surgery.validate_specs(specs, counts)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_validation_accepts_independent_targets() -> None:
    specs = [{"variant": "skip"}, {"variant": "duplicate", "target": "noise_refiner"}, {"variant": "skip_layers", "target": "layers", "layers": [1]}]
    assert len(surgery.validate_specs(specs, {"context_refiner": 2, "noise_refiner": 2, "layers": 2})) == 3
    assert surgery.validate_specs([{"variant": "truncate", "use_layers": 0}], {"context_refiner": 2})


def test_apply_checks_ranges_against_the_model_and_leaves_it_untouched(transformer, inputs) -> None:
    before = structure(transformer)
    with pytest.raises(ValueError, match="valid 0..1"):
        surgery.apply(transformer, [{"variant": "skip_layers", "target": "layers", "layers": [2]}])
    assert structure(transformer) == before and surgery.count_live_hooks() == 0


def test_new_variants_register_by_name(transformer, inputs, monkeypatch) -> None:
    monkeypatch.setattr(surgery.spec, "VARIANTS", dict(surgery.VARIANTS))

    @surgery.register_variant("explode")
    class Explode(surgery.SurgerySpec):
        structural = False

        def apply(self, transformer, registry):
            raise RuntimeError("boom")

    assert "explode" in surgery.variant_names()
    assert isinstance(surgery.SurgerySpec.from_dict({"variant": "explode"}), Explode)
    with pytest.raises(ValueError, match="already registered"):
        surgery.register_variant("skip")(Explode)
    # A failing spec undoes the ones applied before it, then the error propagates.
    expected, before, params = run(transformer, inputs), structure(transformer), state(transformer)
    with pytest.raises(RuntimeError, match="boom"):
        surgery.apply(transformer, [{"variant": "skip"}, {"variant": "explode"}])
    assert structure(transformer) == before and surgery.count_live_hooks() == 0
    assert all(torch.equal(v, transformer.state_dict()[k]) for k, v in params.items())
    assert_equal_outputs(run(transformer, inputs), expected)


# ----------------------------------------------------------------------------- variants: intended outputs


def test_skip_passes_the_refiner_input_through(transformer, any_inputs) -> None:
    baseline = capture_refiner_io(transformer, any_inputs)
    with surgery.apply(transformer, [{"variant": "skip"}]) as handle:
        assert all(isinstance(b, BlockBypass) for b in handle.blocks())
        skipped = capture_refiner_io(transformer, any_inputs)
        out = run(transformer, any_inputs)
    assert torch.equal(skipped["args"][0], baseline["args"][0])
    assert torch.equal(skipped["out"], baseline["args"][0])
    # Oracle: plain forward hooks returning the block's first input (DESIGN.md's verified skip).
    pairs = [(b.register_forward_hook, lambda m, args, o: args[0]) for b in transformer.context_refiner]
    with plain_hooks(pairs):
        assert_equal_outputs(out, run(transformer, any_inputs))
    assert_different_outputs(out, run(transformer, any_inputs))


def test_skip_matches_nnsight_skip(base_transformer, any_inputs) -> None:
    """nnsight 0.8's `.skip()` is an independent implementation of the same bypass."""
    from nnsight import NNsight

    with surgery.apply(base_transformer, [{"variant": "skip"}]):
        ours = run(base_transformer, any_inputs)
    with surgery.apply(base_transformer, [{"variant": "skip_layers", "layers": [1]}]):
        ours_one = run(base_transformer, any_inputs)
    latents, t, caps = any_inputs
    model = NNsight(copy.deepcopy(base_transformer))  # nnsight instruments the modules it wraps for good
    with torch.no_grad():
        with model.trace([latents[i] for i in range(B)], t, caps, return_dict=False):
            for i in range(2):
                model.context_refiner[i].skip(model.context_refiner[i].input)
            theirs = model.output.save()
        with model.trace([latents[i] for i in range(B)], t, caps, return_dict=False):
            model.context_refiner[1].skip(model.context_refiner[1].input)
            theirs_one = model.output.save()
    assert_equal_outputs(ours, theirs[0])
    assert_equal_outputs(ours_one, theirs_one[0])
    assert_different_outputs(ours, ours_one)


def test_identity_init_is_exactly_skip(transformer, any_inputs) -> None:
    with surgery.apply(transformer, [{"variant": "skip"}]):
        skipped = run(transformer, any_inputs)
    originals = list(transformer.context_refiner)
    with surgery.apply(transformer, [{"variant": "identity_init"}]) as handle:
        copies = list(handle.blocks())
        io = capture_refiner_io(transformer, any_inputs)
        identity = run(transformer, any_inputs)
    assert all(type(b).__name__ == "ZImageTransformerBlock" for b in copies)
    assert not any(c is o for c in copies for o in originals)
    assert list(transformer.context_refiner) == originals
    assert all(o.feed_forward.w2.weight.abs().sum() > 0 for o in originals)  # originals untouched
    assert all(c.attention.to_out[0].weight.abs().sum() == 0 and c.feed_forward.w2.weight.abs().sum() == 0 for c in copies)
    # RMSNorm(0) == 0, so x + norm2(0) is x to the bit: tighter than allclose.
    assert torch.equal(io["out"], io["args"][0])
    for a, b in zip(identity, skipped):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_identity_init_on_modulated_blocks_is_the_identity(transformer, inputs) -> None:
    with surgery.apply(transformer, [{"variant": "identity_init", "target": "layers"}]):
        io = capture_refiner_io(transformer, inputs, target="layers")
    assert torch.equal(io["out"], io["args"][0])


def test_truncate_keeps_the_first_blocks(transformer, inputs) -> None:
    baseline = capture_refiner_io(transformer, inputs)
    blocks = list(transformer.context_refiner)
    with surgery.apply(transformer, [{"variant": "truncate", "use_layers": 1}]) as handle:
        assert [type(b) for b in handle.blocks()] == [type(blocks[0]), BlockBypass]
        assert handle.blocks()[0] is blocks[0]
        io = capture_refiner_io(transformer, inputs)
    assert torch.equal(io["out"], by_hand(blocks[:1], baseline["args"]))
    with surgery.apply(transformer, [{"variant": "truncate", "use_layers": 2}]):
        assert torch.equal(capture_refiner_io(transformer, inputs)["out"], baseline["out"])
    with surgery.apply(transformer, [{"variant": "truncate", "use_layers": 0}]):
        t0 = run(transformer, inputs)
    with surgery.apply(transformer, [{"variant": "skip"}]):
        assert_equal_outputs(t0, run(transformer, inputs))


@pytest.mark.parametrize("shared", [True, False])
def test_duplicate_runs_each_block_twice(transformer, any_inputs, shared: bool) -> None:
    baseline = capture_refiner_io(transformer, any_inputs)
    originals = list(transformer.context_refiner)
    counts, pairs = count_calls(originals)
    with surgery.apply(transformer, [{"variant": "duplicate", "shared": shared}]) as handle:
        blocks = list(handle.blocks())
        with plain_hooks(pairs):
            run(transformer, any_inputs)
        io = capture_refiner_io(transformer, any_inputs)
    assert len(blocks) == 4 and blocks[0] is originals[0] and blocks[2] is originals[1]
    if shared:
        assert blocks[1] is originals[0] and blocks[3] is originals[1]
        assert list(counts.values()) == [2, 2]
    else:
        assert len({id(b) for b in blocks}) == 4
        assert list(counts.values()) == [1, 1]  # the copies carry no hooks: they run the second pass
        for copy_, original in ((blocks[1], originals[0]), (blocks[3], originals[1])):
            assert all(torch.equal(a, b) and a is not b for a, b in zip(copy_.parameters(), original.parameters()))
    reference = by_hand([originals[0], originals[0], originals[1], originals[1]], baseline["args"])
    assert torch.equal(io["out"], reference)


def test_skip_layers_on_refiner_and_on_dit_layers(transformer, inputs) -> None:
    baseline = capture_refiner_io(transformer, inputs)
    blocks = list(transformer.context_refiner)
    with surgery.apply(transformer, [{"variant": "skip_layers", "layers": [0]}]):
        assert torch.equal(capture_refiner_io(transformer, inputs)["out"], by_hand(blocks[1:], baseline["args"]))
    with surgery.apply(transformer, [{"variant": "skip_layers", "target": "layers", "layers": [1]}]) as handle:
        assert isinstance(handle.blocks("layers")[1], BlockBypass) and not isinstance(handle.blocks("layers")[0], BlockBypass)
        ours = run(transformer, inputs)
    with plain_hooks([(transformer.layers[1].register_forward_hook, lambda m, args, o: args[0])]):
        assert_equal_outputs(ours, run(transformer, inputs))
    assert_different_outputs(ours, run(transformer, inputs))


# ----------------------------------------------------------------------------- exact restore, nesting


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: "-".join(str(v) for v in s.values()))
@pytest.mark.parametrize("raise_inside", [False, True])
def test_everything_is_restored_on_exit(transformer, inputs, spec: dict, raise_inside: bool) -> None:
    expected, params, before = run(transformer, inputs), state(transformer), structure(transformer)
    keys = list(transformer.state_dict())
    with pytest.raises(RuntimeError, match="inside") if raise_inside else _nothing():
        with surgery.apply(transformer, [spec]):
            assert surgery.count_live_hooks() == 1
            if spec["variant"] != "identity_init":  # identity_init is meant to change nothing numerically
                assert_different_outputs(run(transformer, inputs), expected)
            if raise_inside:
                raise RuntimeError("error inside the context")
    assert surgery.count_live_hooks() == 0 and surgery.live_hooks() == []
    assert structure(transformer) == before and torch_hook_count(transformer) == 0
    after = transformer.state_dict()
    assert list(after) == keys
    assert all(torch.equal(params[k], after[k]) for k in keys)
    assert_equal_outputs(run(transformer, inputs), expected)


@contextmanager
def _nothing():
    yield


def test_contexts_nest_and_remove_only_their_own_changes(transformer, inputs) -> None:
    expected, before = run(transformer, inputs), structure(transformer)
    with surgery.apply(transformer, [{"variant": "truncate", "use_layers": 1}]) as outer:
        outer_out = run(transformer, inputs)
        outer_list = outer.blocks()
        with surgery.apply(transformer, [{"variant": "skip_layers", "layers": [0]}, {"variant": "duplicate", "target": "layers"}]):
            assert surgery.count_live_hooks() == 3
            with surgery.record_block_io(transformer) as recorder:
                assert surgery.count_live_hooks() == 6  # + a call counter on the transformer, one hook per block
                run(transformer, inputs)
            assert len(recorder.records) == 2 and surgery.count_live_hooks() == 3
            # inner skip of block 0 on top of the outer truncation: both bypassed == skip
            assert all(isinstance(b, BlockBypass) for b in transformer.context_refiner)
        assert transformer.context_refiner is outer_list and surgery.count_live_hooks() == 1
        assert_equal_outputs(run(transformer, inputs), outer_out)
    assert structure(transformer) == before and surgery.count_live_hooks() == 0
    assert_equal_outputs(run(transformer, inputs), expected)


def test_registry_removes_hooks_lifo_and_by_hand(transformer) -> None:
    block = transformer.context_refiner[0]
    outer = surgery.HookRegistry("outer")
    outer.add_forward_pre_hook(block, lambda m, a: None, name="pre")
    outer.swap_child(transformer, "layers", nn.ModuleList(list(transformer.layers)), name="layers")
    with surgery.HookRegistry("inner") as inner:
        inner.add_forward_hook(block, lambda m, a, o: None, name="fwd")
        assert inner.entries() == ["inner/fwd"] and len(block._forward_hooks) == 1
        assert surgery.live_hooks() == ["forward_pre_hook:outer/pre", "swap:outer/layers", "forward_hook:inner/fwd"]
    assert len(block._forward_hooks) == 0 and len(block._forward_pre_hooks) == 1
    outer.remove()
    outer.remove()  # idempotent
    assert len(block._forward_pre_hooks) == 0 and surgery.count_live_hooks() == 0
    # Handles closed out of order still restore the original, but say so.
    original = transformer.context_refiner
    first = surgery.apply(transformer, [{"variant": "skip"}])
    second = surgery.apply(transformer, [{"variant": "skip_layers", "layers": [0]}])
    second_list = transformer.context_refiner
    with pytest.warns(UserWarning, match="out of order"):
        first.remove()
    assert transformer.context_refiner is second_list  # built on the first: stays until removed
    second.remove()
    assert transformer.context_refiner is original and surgery.count_live_hooks() == 0


# ----------------------------------------------------------------------------- probes


def test_record_block_io_and_embedding_drift(transformer, any_inputs) -> None:
    expected = run(transformer, any_inputs)
    with surgery.record_block_io(transformer) as recorder:
        out = run(transformer, any_inputs)
        run(transformer, any_inputs)
    assert_equal_outputs(out, expected)  # recording changes nothing
    calls = recorder.calls()
    assert len(calls) == 2 and [len(c) for c in calls] == [1, 1] and [r.index for r in calls[0][0]] == [0, 1]
    assert [r.call for r in recorder.records] == [0, 0, 1, 1] and recorder.call_sizes == [B, B]
    assert torch.equal(calls[0][0][0].output, calls[0][0][1].input)
    drift = surgery.embedding_drift(recorder)
    assert drift.per_block.shape == (B, 2) and drift.end_to_end.shape == (B,) and len(drift) == B
    assert drift.names == ["context_refiner.0", "context_refiner.1"]
    assert ((drift.per_block >= -1) & (drift.per_block <= 1)).all() and (drift.per_block < 0.9999).all()
    assert list(drift.rows()[0]) == ["context_refiner.0", "context_refiner.1", "context_refiner.all"]
    assert torch.equal(drift[1], drift.per_block[1])
    with surgery.apply(transformer, [{"variant": "identity_init"}]), surgery.record_block_io(transformer) as recorder:
        run(transformer, any_inputs)
    identity = surgery.embedding_drift(recorder)
    torch.testing.assert_close(identity.per_block, torch.ones(B, 2), rtol=0, atol=1e-6)
    torch.testing.assert_close(identity.end_to_end, torch.ones(B), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        surgery.embedding_drift(recorder, call=3)


def test_drift_ignores_padded_rows() -> None:
    before = torch.randn(2, 4, 8)
    after = before.clone()
    after[0, 3] = -before[0, 3]  # a padded row pointing the other way
    mask = torch.tensor([[True, True, True, False], [True] * 4])
    torch.testing.assert_close(surgery.token_cosine(before, after, mask), torch.ones(2))
    assert surgery.token_cosine(before, after)[0] < 0.6
    after[1, 2:] = -before[1, 2:]
    torch.testing.assert_close(surgery.token_cosine(before, after, None, lengths=[3, 2]), torch.ones(2))


def plain_refiner_io(transformer: nn.Module, call) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) of each context-refiner block during `call()`, by plain torch hooks."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    pairs = [(block.register_forward_hook, lambda m, a, o: seen.append((a[0].detach(), o.detach())))
             for block in transformer.context_refiner]
    with plain_hooks(pairs):
        call()
    return seen


def test_drift_of_a_length_grouped_call_is_put_back_by_row(transformer) -> None:
    """Length grouping runs captions of 5, 40 and 7 tokens (padded to 32, 64, 32) as two sub-calls,
    rows [0, 2] and [1]: drift still has one row per caption, in order, counting only each
    caption's own rows. Oracle: plain hooks on the ungrouped (masked) call and a plain cosine
    over the first `length` rows of each caption."""
    from llm_dit.accel import install_length_grouping, remove_length_grouping

    lengths = [5, 40, 7]
    g = torch.Generator().manual_seed(3)
    latents = [torch.randn(16, 1, 4, 4, generator=g) for _ in lengths]
    caps = [torch.randn(n, 32, generator=g) for n in lengths]
    t = torch.full((3,), 0.3)

    def call() -> None:
        with torch.no_grad():
            transformer(latents, t, caps, return_dict=False)

    (x0, y0), (_, y1) = plain_refiner_io(transformer, call)
    oracle = torch.tensor([
        [torch.nn.functional.cosine_similarity(x[i, :n], y[i, :n], dim=-1).mean().item() for x, y in ((x0, y0), (y0, y1))]
        for i, n in enumerate(lengths)
    ])
    pad_counted = torch.nn.functional.cosine_similarity(x0[0, :32], y0[0, :32], dim=-1).mean().item()
    assert abs(pad_counted - oracle[0, 0].item()) > 1e-3  # the learned pad rows would move the number
    install_length_grouping(transformer)
    try:
        with surgery.record_block_io(transformer) as recorder:
            call()
    finally:
        remove_length_grouping(transformer)
    (runs,) = recorder.calls()
    assert [run[0].rows for run in runs] == [(0, 2), (1,)] and recorder.call_sizes == [3]
    drift = surgery.embedding_drift(recorder, lengths=lengths)
    torch.testing.assert_close(drift.per_block, oracle, rtol=0, atol=1e-5)
    end_to_end = [torch.nn.functional.cosine_similarity(x0[i, :n], y1[i, :n], dim=-1).mean().item() for i, n in enumerate(lengths)]
    torch.testing.assert_close(drift.end_to_end, torch.tensor(end_to_end), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="lengths has 2 values; the recorded call has 3 rows"):
        surgery.embedding_drift(recorder, lengths=lengths[:2])


def test_drift_names_rows_the_refiner_cache_served(transformer) -> None:
    """Under length grouping the refiner cache can serve one sub-batch and run another: that
    call's drift would miss rows, and embedding_drift names them instead of guessing."""
    from llm_dit.accel import install_length_grouping, remove_length_grouping

    g = torch.Generator().manual_seed(4)
    latents = [torch.randn(16, 1, 4, 4, generator=g) for _ in range(3)]
    caps = [torch.randn(n, 32, generator=g) for n in (5, 40, 7)]
    changed = [caps[0], torch.randn(40, 32, generator=g), caps[2]]  # only row 1's sub-batch differs
    install_length_grouping(transformer)
    try:
        with surgery.record_block_io(transformer) as recorder, cache_context_refiner(transformer), torch.no_grad():
            transformer(latents, torch.full((3,), 0.3), caps, return_dict=False)
            transformer(latents, torch.full((3,), 0.3), changed, return_dict=False)
    finally:
        remove_length_grouping(transformer)
    assert len(recorder.call_sizes) == 2 and [[run[0].rows for run in c] for c in recorder.calls()] == [[(0, 2), (1,)], [(1,)]]
    assert surgery.embedding_drift(recorder, call=0).per_block.shape == (3, 2)
    with pytest.raises(ValueError, match=r"rows \[0, 2\] of call 1 ran no context_refiner blocks"):
        surgery.embedding_drift(recorder, call=1)
    with surgery.record_block_io(transformer) as empty:
        pass
    with pytest.raises(ValueError, match="no context_refiner call was recorded"):
        surgery.embedding_drift(empty)


def test_recording_a_shared_duplicate_sees_every_position(transformer, inputs) -> None:
    with surgery.apply(transformer, [{"variant": "duplicate", "shared": True}]), surgery.record_block_io(transformer) as recorder:
        run(transformer, inputs)
        assert surgery.count_live_hooks() == 4  # one swap + the call counter + one hook per distinct block
    assert [r.index for r in recorder.records] == [0, 1, 2, 3]
    assert surgery.embedding_drift(recorder).per_block.shape == (B, 4)


# ----------------------------------------------------------------------------- refiner cache


def sampling_loop(transformer: nn.Module, inputs: tuple, steps: int = 4) -> list[list[torch.Tensor]]:
    return [run(transformer, inputs, t=torch.full((B,), (i + 1) / (steps + 1))) for i in range(steps)]


@pytest.mark.parametrize("specs", [[], [{"variant": "truncate", "use_layers": 1}], [{"variant": "duplicate", "shared": False}]])
def test_refiner_cache_is_bit_identical_and_runs_blocks_once(transformer, any_inputs, specs) -> None:
    with surgery.apply(transformer, specs) as handle:
        blocks = list(handle.blocks())
        counts, pairs = count_calls(blocks)
        with plain_hooks(pairs):
            plain = sampling_loop(transformer, any_inputs)
            assert set(counts.values()) == {4}
            counts.update({k: 0 for k in counts})
            keys = list(transformer.state_dict())
            with cache_context_refiner(transformer) as cache:
                assert list(transformer.state_dict()) == keys  # same blocks under the same names
                cached = sampling_loop(transformer, any_inputs)
            assert set(counts.values()) == {1} and (cache.hits, cache.misses) == (3, 1)
        assert transformer.context_refiner is handle.blocks() and list(handle.blocks()) == blocks
    for a, b in zip(plain, cached):
        assert_equal_outputs(a, b)
    assert surgery.count_live_hooks() == 0


def test_refiner_cache_recomputes_on_new_inputs_and_weights(transformer, inputs) -> None:
    keys = list(transformer.state_dict())
    latents, t, caps = inputs
    other = (latents, t, [c + 1 for c in caps])
    with cache_context_refiner(transformer, max_entries=2) as cache:
        assert list(transformer.state_dict()) == keys  # same names: the blocks are the same objects
        first = run(transformer, inputs)
        run(transformer, other)
        assert (cache.hits, cache.misses) == (0, 2)
        assert_equal_outputs(run(transformer, inputs), first)
        assert (cache.hits, cache.misses) == (1, 2)
        with torch.no_grad():
            transformer.context_refiner[0].feed_forward.w2.weight.mul_(0.5)  # in place: stale entries drop
        changed = run(transformer, inputs)
        assert cache.misses == 3
        assert_different_outputs(changed, first)
        with torch.enable_grad():  # training: no caching at all
            transformer([latents[i] for i in range(1)], t[:1], caps[:1], return_dict=False)
        assert cache.misses == 3 and cache.hits == 1
        with torch.inference_mode():
            assert_equal_outputs(run(transformer, inputs), changed)
        assert cache.hits == 2
    assert surgery.count_live_hooks() == 0


def test_refiner_cache_matches_known_captions_without_comparing_values(transformer, inputs) -> None:
    """The same caption tensors, unmodified, are served without torch.equal (no device sync);
    a caption edited in place, or a changed caption embedder, is recomputed."""
    latents, t, caps = inputs
    with cache_context_refiner(transformer) as cache:
        first = run(transformer, inputs)
        assert_equal_outputs(run(transformer, inputs), first)
        assert (cache.hits, cache.fast_hits, cache.misses) == (1, 1, 1)
        copies = (latents, t, [c.clone() for c in caps])  # equal values, other tensors: compared by value
        assert_equal_outputs(run(transformer, copies), first)
        assert (cache.hits, cache.fast_hits, cache.misses) == (2, 1, 1)
        with torch.no_grad():
            caps[0].add_(1.0)  # (a scale would vanish in the embedder's RMSNorm)
        edited = run(transformer, inputs)
        assert cache.misses == 2
        assert_different_outputs(edited, first)
        with torch.no_grad():
            transformer.cap_embedder[-1].weight.mul_(0.5)
        run(transformer, inputs)
        assert cache.misses == 3
    assert surgery.count_live_hooks() == 0


def test_refiner_cache_never_serves_one_sub_batch_for_another(transformer) -> None:
    """Length grouping runs [small image, caption A] and [large image, caption B] (same caption
    length) as two sub-batches of one call: the caption identity of the call fits neither alone."""
    from llm_dit.accel import install_length_grouping

    install_length_grouping(transformer)
    generator = torch.Generator().manual_seed(3)
    x = [torch.randn(16, 1, 8, 8, generator=generator), torch.randn(16, 1, 16, 16, generator=generator)]
    caps = [torch.randn(12, transformer.config.cap_feat_dim, generator=generator) for _ in range(2)]
    t = torch.tensor([0.4, 0.4])
    with torch.no_grad():
        plain = transformer(x, t, caps, return_dict=False)[0]
        with cache_context_refiner(transformer) as cache:
            for _ in range(2):
                cached = transformer(x, t, caps, return_dict=False)[0]
                for a, b in zip(cached, plain):
                    assert torch.allclose(a, b, atol=1e-6)
        assert cache.fast_hits == 0 and cache.hits == 2 and cache.misses == 2
    assert surgery.live_hooks() == ["forward:accel/length_grouping"]  # the speed option stays until removed


def test_refiner_cache_refuses_misuse(transformer) -> None:
    with pytest.raises(ValueError, match="its blocks take the timestep"):
        with cache_context_refiner(transformer, target="layers"):
            pass
    with cache_context_refiner(transformer):
        with pytest.raises(RuntimeError, match="apply structural surgery first"):
            surgery.apply(transformer, [{"variant": "skip"}])
        with pytest.raises(RuntimeError, match="already cached"):
            with cache_context_refiner(transformer):
                pass
        assert "Cached" in repr(transformer.context_refiner)
    assert surgery.count_live_hooks() == 0 and type(transformer.context_refiner) is nn.ModuleList


# ----------------------------------------------------------------------------- skip-layer guidance


def test_skip_layer_guidance_schedule_and_validation(transformer, inputs) -> None:
    slg = surgery.SkipLayerGuidance(layers=[7, 8, 9])
    sd3 = [i for i in range(28) if i > 28 * 0.01 and i < 28 * 0.2]  # StableDiffusion3Pipeline's test
    assert [i for i in range(28) if slg.active(i, 28)] == sd3 == [1, 2, 3, 4, 5]
    assert [i for i in range(8) if slg.active(i, 8)] == [1]
    assert not surgery.SkipLayerGuidance(layers=[1], scale=0).active(1, 8)
    assert surgery.SkipLayerGuidance.from_dict(slg.to_dict()) == slg
    for kwargs, message in [
        ({"layers": []}, "non-empty"),
        ({"layers": [1, -1]}, "non-negative"),
        ({"layers": [1], "start": 0.5, "stop": 0.2}, "0 <= start < stop <= 1"),
        ({"layers": [1], "scale": -1.0}, "scale must be >= 0"),
        ({"layers": [1], "target": "blocks..0"}, "dotted path to a block list"),
    ]:
        with pytest.raises(ValueError, match=message):
            surgery.SkipLayerGuidance(**kwargs)
    with pytest.raises(ValueError, match="no option"):
        surgery.SkipLayerGuidance.from_dict({"layers": [1], "sacle": 2})
    with pytest.raises(ValueError, match="valid 0..1"):
        slg.validate(transformer)
    with pytest.raises(ValueError, match="no block list 'blocks'"):
        surgery.SkipLayerGuidance(layers=[1], target="blocks").validate(transformer)
    one = torch.ones(3)
    assert torch.equal(slg.guide(one, 2 * one, one), one + 2.8)
    with surgery.skip_layers_context(transformer, layers=[1]):
        skipped = run(transformer, inputs)
        assert surgery.count_live_hooks() == 1
    with surgery.apply(transformer, [{"variant": "skip_layers", "target": "layers", "layers": [1]}]):
        assert_equal_outputs(skipped, run(transformer, inputs))
    # Inside a refiner cache (the sampler's setup), the extra pass works and reuses the cache.
    with cache_context_refiner(transformer) as cache:
        run(transformer, inputs)
        with surgery.SkipLayerGuidance(layers=[1]).context(transformer):
            assert_equal_outputs(skipped, run(transformer, inputs))
    assert cache.hits == 1 and surgery.count_live_hooks() == 0


# ----------------------------------------------------------------------------- discoverability


def test_hook_points_list_every_block_list(base_transformer) -> None:
    rows = surgery.hook_points(base_transformer)
    names = [r.name for r in rows]
    lists = [r.name for r in rows if r.kind in ("list", "block")]
    assert lists == ["noise_refiner", "noise_refiner.0", "noise_refiner.1", "context_refiner", "context_refiner.0",
                     "context_refiner.1", "layers", "layers.0", "layers.1"]  # registration order; fmt: skip
    assert [r.name for r in rows if r.kind == "module"] == [
        "all_x_embedder.2-1", "all_final_layer.2-1", "t_embedder", "cap_embedder"]  # fmt: skip
    block = {r.name: r for r in rows}
    assert block["context_refiner.0"].modulated is False and block["layers.1"].modulated is True
    assert block["context_refiner"].parameters == sum(p.numel() for p in base_transformer.context_refiner.parameters())
    table = surgery.format_hook_points(rows)
    assert "context_refiner.1" in table and "ZImageTransformerBlock" in table and table == surgery.format_hook_points(base_transformer)
    assert surgery.block_counts(base_transformer) == {"context_refiner": 2, "noise_refiner": 2, "layers": 2}

    from diffusers import ZImageTransformer2DModel

    omni = ZImageTransformer2DModel(**TINY_TRANSFORMER_CONFIG, siglip_feat_dim=16)
    assert "siglip_refiner.1" in [r.name for r in surgery.hook_points(omni)]
    assert surgery.block_counts(omni)["siglip_refiner"] == 2


# ----------------------------------------------------------------------------- gradient checkpointing


def loss_and_grads(transformer: nn.Module, inputs: tuple, specs: list[dict], backward_inside: bool = True) -> dict:
    latents, t, caps = inputs
    transformer.zero_grad(set_to_none=True)
    with surgery.apply(transformer, specs):
        out = transformer([latents[i] for i in range(B)], t, caps, return_dict=False)[0]
        loss = sum((o.float() ** 2).mean() for o in out)
        if backward_inside:
            loss.backward()
    if not backward_inside:
        loss.backward()
    return {n: p.grad.clone() for n, p in transformer.named_parameters() if p.grad is not None}


def assert_same_grads(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_checkpoint_recompute_and_hooks(transformer, inputs) -> None:
    """What torch does to hooks on recompute (the facts hooks.py's design rests on)."""
    transformer.requires_grad_(True).enable_gradient_checkpointing()
    latents, t, caps = inputs
    block = transformer.context_refiner[0]
    fired = {"pre": 0, "post": 0}
    pairs = [
        (block.register_forward_pre_hook, lambda m, a: fired.__setitem__("pre", fired["pre"] + 1)),
        (block.register_forward_hook, lambda m, a, o: fired.__setitem__("post", fired["post"] + 1)),
    ]
    for early_stop, expected in [(True, {"pre": 2, "post": 1}), (False, {"pre": 2, "post": 2})]:
        fired.update(pre=0, post=0)
        with plain_hooks(pairs), torch.utils.checkpoint.set_checkpoint_early_stop(early_stop):
            out = transformer([latents[i] for i in range(B)], t, caps, return_dict=False)[0]
            sum(o.sum() for o in out).backward()
        # Recompute re-enters __call__ (pre-hooks fire again); with early stop (the default)
        # it is cut off once the saved tensors are rebuilt, so forward hooks don't.
        assert fired == expected, (early_stop, fired)
    # Hence a value-changing hook that is gone before backward silently corrupts gradients:
    transformer.disable_gradient_checkpointing()
    reference = _grads_with_prehook(transformer, inputs, remove_before_backward=False)
    transformer.enable_gradient_checkpointing()
    assert_same_grads(_grads_with_prehook(transformer, inputs, remove_before_backward=False), reference)
    broken = _grads_with_prehook(transformer, inputs, remove_before_backward=True)
    name = "context_refiner.0.feed_forward.w1.weight"
    assert not torch.allclose(broken[name], reference[name], rtol=1e-3)


def _grads_with_prehook(transformer: nn.Module, inputs: tuple, remove_before_backward: bool) -> dict:
    latents, t, caps = inputs
    transformer.zero_grad(set_to_none=True)
    handle = transformer.context_refiner[0].register_forward_pre_hook(lambda m, args: (args[0] * 2, *args[1:]))
    out = transformer([latents[i] for i in range(B)], t, caps, return_dict=False)[0]
    loss = sum((o ** 2).mean() for o in out)
    if remove_before_backward:
        handle.remove()
    loss.backward()
    handle.remove()
    return {n: p.grad.clone() for n, p in transformer.named_parameters() if p.grad is not None}


CHECKPOINT_SPECS = [
    {"variant": "skip"},
    {"variant": "duplicate", "shared": False},
    {"variant": "identity_init"},
    {"variant": "skip_layers", "target": "layers", "layers": [1]},
]


@pytest.mark.parametrize("spec", CHECKPOINT_SPECS, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_surgery_holds_under_gradient_checkpointing(transformer, inputs, spec: dict) -> None:
    """Module swaps are captured by the checkpoint: same gradients with and without it,
    even when backward runs after the context has exited."""
    transformer.requires_grad_(True)
    reference = loss_and_grads(transformer, inputs, [spec])
    params = state(transformer)
    transformer.enable_gradient_checkpointing()
    assert_same_grads(loss_and_grads(transformer, inputs, [spec]), reference)
    assert_same_grads(loss_and_grads(transformer, inputs, [spec], backward_inside=False), reference)
    assert surgery.count_live_hooks() == 0 and torch_hook_count(transformer) == 0
    assert all(torch.equal(v, transformer.state_dict()[k]) for k, v in params.items())


def test_probes_record_once_per_step_under_gradient_checkpointing(transformer, inputs) -> None:
    transformer.requires_grad_(True).enable_gradient_checkpointing()
    latents, t, caps = inputs
    with torch.utils.checkpoint.set_checkpoint_early_stop(False), surgery.record_block_io(transformer) as recorder:
        out = transformer([latents[i] for i in range(B)], t, caps, return_dict=False)[0]
        sum(o.sum() for o in out).backward()
    assert len(recorder.records) == 2  # the recompute inside backward is not recorded again
    assert transformer.context_refiner[0].feed_forward.w1.weight.grad is not None
