"""Surgery through the module: conditions' specs apply per batch, skip-layer guidance, hook points."""

from __future__ import annotations

import pytest
import torch

import surgery
from llm_dit.cli import cli_main
from llm_dit.encoding.options import EncodingOptions
from llm_dit.module import ZImageModule
from llm_dit.sampling.settings import SamplerSettings
from llm_dit.study import Study, StudyItem


@pytest.fixture(scope="module")
def module():
    module = ZImageModule(weights="tiny-random", predict={"record_refiner_drift": True})
    module.configure_model()
    return module


def item(surgery_specs=(), **sampler) -> StudyItem:
    return StudyItem(
        item_id="c/p000_s1", study="s", condition="c", condition_index=0, prompt_index=0, prompt="A red cat",
        original_prompt="A red cat", prompt_type=None, seed=1, encoding=EncodingOptions(),
        sampler=SamplerSettings(height=32, width=32, steps=3, **sampler), surgery=tuple(surgery_specs),
    )


def test_skip_changes_images_and_leaves_model_intact(module):
    before = {k: v.clone() for k, v in module.transformer.state_dict().items()}
    plain, *_ = module.generate([item()])
    skipped, *_ = module.generate([item([{"variant": "skip"}])])
    assert (plain - skipped).abs().max() > 1e-4
    after = module.transformer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert surgery.count_live_hooks() == 0


def test_identity_init_equals_skip(module):
    skipped, *_ = module.generate([item([{"variant": "skip"}])])
    identity, *_ = module.generate([item([{"variant": "identity_init"}])])
    assert torch.allclose(skipped, identity, atol=1e-5)


def test_refiner_drift_is_reported(module):
    _, _, extras, _, _ = module.generate([item()])
    drift = extras["refiner_drift"][0]
    assert len(drift) == 2 and all(-1.0 <= value <= 1.0 for value in drift)


def test_skip_layer_guidance_changes_output_only_when_active(module):
    plain, *_ = module.generate([item()])
    guided, *_ = module.generate([item(skip_layer_guidance={"layers": [1], "scale": 2.8, "start": 0.0, "stop": 1.0})])
    inactive, *_ = module.generate([item(skip_layer_guidance={"layers": [1], "scale": 0.0})])
    assert (plain - guided).abs().max() > 1e-4
    assert torch.equal(plain, inactive)


def test_out_of_range_surgery_is_caught_before_loading():
    study = Study(prompts=["A cat"], conditions=[{"name": "bad", "surgery": [{"variant": "skip_layers", "layers": [5]}]}])
    with pytest.raises(ValueError, match="condition 'bad'.*out of range"):
        ZImageModule(weights="tiny-random").validate_study(study)


def test_out_of_range_skip_layer_guidance_is_caught_before_loading():
    study = Study(prompts=["A cat"], sampler={"skip_layer_guidance": {"layers": [7]}})
    with pytest.raises(ValueError, match="condition 'control'.*layer index 7 out of range; layers has 2 blocks"):
        ZImageModule(weights="tiny-random").validate_study(study)


def test_hook_points_command_lists_blocks(capsys):
    cli_main(["hook-points", "--weights", "tiny-random"])
    out = capsys.readouterr().out
    for name in ("context_refiner.1", "noise_refiner.0", "layers.1"):
        assert name in out
