"""Refiner drift through the module: caption rows only, and the same under length grouping.

Oracle: each prompt generated alone by a plain module (no probes, no speed options) with
plain torch hooks on the context-refiner blocks and on the transformer's caption argument;
drift = a plain torch cosine over each caption's own rows (not Z-Image's learned pad rows).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_dit.accel import has_length_grouping
from llm_dit.module import ZImageModule
from llm_dit.study import Study

pytestmark = pytest.mark.usefixtures("one_thread")

LONG = ("A red bicycle leaning on a wall at sunset, with long shadows, a blue door, a sleeping dog, "
        "three potted plants and a cat watching from a window above the street")


def items(guidance: float):
    study = Study(name="drift", prompts=["A cat", LONG], seeds=[1],
                  sampler={"steps": 2, "height": 32, "width": 32, "guidance_scale": guidance})
    return study.items()


@pytest.fixture(scope="module")
def plain() -> ZImageModule:
    module = ZImageModule(weights="tiny-random")
    module.configure_model()
    return module


@pytest.fixture(scope="module")
def grouped() -> ZImageModule:
    """attention_backend='native' installs length grouping without compile (works on CPU)."""
    module = ZImageModule(weights="tiny-random", predict={"record_refiner_drift": True}, speed={"attention_backend": "native"})
    module.configure_model()
    assert has_length_grouping(module.transformer)
    return module


def oracle_drift(module: ZImageModule, item) -> tuple[list[float], float]:
    """(drift per block over the caption's rows, block-0 drift over all its padded rows)."""
    ios: list[tuple[torch.Tensor, torch.Tensor]] = []
    lengths: list[int] = []
    handles = [block.register_forward_hook(lambda m, a, o: ios.append((a[0].detach(), o.detach())))
               for block in module.transformer.context_refiner]
    handles.append(module.transformer.register_forward_pre_hook(
        lambda m, a: lengths.extend(len(c) for c in a[2]) if not lengths else None))
    try:
        module.generate([item])
    finally:
        for handle in handles:
            handle.remove()
    n = lengths[0]
    blocks = len(module.transformer.context_refiner)
    drift = [F.cosine_similarity(x[0, :n], y[0, :n], dim=-1).mean().item() for x, y in ios[:blocks]]
    x, y = ios[0]
    return drift, F.cosine_similarity(x[0], y[0], dim=-1).mean().item()


@pytest.mark.parametrize("guidance", [0.0, 4.0])
def test_drift_counts_caption_rows_under_length_grouping(plain, grouped, guidance):
    """A batch of a 10-row and a 49-row caption (padded to 32 and 64: two sub-calls, and with CFG
    the negative in a third group) gives each item the drift of its own caption rows."""
    batch = items(guidance)
    expected = [oracle_drift(plain, item) for item in batch]
    _, encodings, extras, _, _ = grouped.generate(batch)
    assert len({-(-len(e.embeddings) // 32) for e in encodings}) == 2  # really two padded lengths
    for (drift, with_pads), got in zip(expected, extras["refiner_drift"]):
        assert got == pytest.approx(drift, abs=1e-5)
    short_drift, short_with_pads = expected[0]
    assert abs(short_with_pads - short_drift[0]) > 0.05  # counting pad rows would change the number


def test_drift_without_grouping_matches(plain):
    module = ZImageModule(weights="tiny-random", predict={"record_refiner_drift": True})
    module.configure_model()
    batch = items(0.0)
    _, _, extras, _, _ = module.generate(batch)
    for item, got in zip(batch, extras["refiner_drift"]):
        assert got == pytest.approx(oracle_drift(plain, item)[0], abs=1e-5)
