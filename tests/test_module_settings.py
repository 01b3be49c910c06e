"""ZImageModule's grouped settings: dicts or dataclasses, plain hparams that rebuild the module,
flat names for the resume fingerprint (unchanged from the flat constructor), a migration helper."""

from __future__ import annotations

import pytest

from llm_dit.models.placement import Placement
from llm_dit.module import ZImageModule
from llm_dit.module_settings import SpeedSettings, group_options
from llm_dit.resume import NUMERIC_OPTIONS, model_settings


def test_groups_take_dicts_or_dataclasses_and_hparams_rebuild_the_module():
    module = ZImageModule(weights="tiny-random", load={"placement": Placement(vae_dtype="bfloat16")},
                          speed=SpeedSettings(share_steps=False), predict={"record_refiner_drift": True},
                          fit={"adapter": {"variant": "lora", "rank": 4}})
    assert module.speed_settings.share_steps is False and module.predict_settings.record_refiner_drift
    again = ZImageModule(**dict(module.hparams))  # what load_from_checkpoint does with hparams.yaml
    assert dict(again.hparams) == dict(module.hparams)
    assert again.load_settings.placement == Placement(vae_dtype="bfloat16")
    assert again.adapter_config.rank == 4


def test_resume_fingerprint_names_and_values_are_the_flat_ones():
    module = ZImageModule(weights="tiny-random", load={"tiny_seed": 3, "placement": Placement(vae_tiling=True)},
                          speed={"compile": ["vae"]})
    settings = model_settings(module)
    assert list(settings) == list(NUMERIC_OPTIONS)
    # the flat constructor stored the Placement object, which the fingerprint wrote as its repr
    assert settings["placement"] == str(Placement(vae_tiling=True)) and settings["tiny_seed"] == 3
    assert settings["compile"] == ["vae"]


def test_unknown_group_options_are_named():
    with pytest.raises(ValueError, match=r"unknown model.speed option\(s\) \['compil'\]; valid: \['compile'"):
        ZImageModule(weights="tiny-random", speed={"compil": True})
    with pytest.raises(ValueError, match="predict.encoder_padding must be one of none, diffusers"):
        ZImageModule(weights="tiny-random", predict={"encoder_padding": "left"})


def test_group_options_migrates_flat_names():
    assert group_options(weights="tiny", fp8=True, record_refiner_drift=True, tiny_seed=2) == {
        "weights": "tiny", "speed": {"fp8": True}, "predict": {"record_refiner_drift": True}, "load": {"tiny_seed": 2}}
    with pytest.raises(ValueError, match="unknown ZImageModule option 'share_step'"):
        group_options(share_step=True)
