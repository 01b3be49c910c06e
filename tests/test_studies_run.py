"""Every study config runs end to end on the tiny model (shrunk: first prompt, first seed, all conditions)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from callbacks.writer import read_rows
from llm_dit.cli import cli_main
from llm_dit.study import Study

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STUDY_CONFIGS = sorted(
    path for path in CONFIGS.glob("*.yaml")
    if yaml.safe_load(path.read_text())["data"]["class_path"].endswith("StudyDataModule")
)


# Needs the adapter `fit` writes first: tests/test_study_configs.py runs fit, then this config.
NEEDS_FIT = {"refiner_style_adapter_predict", "world_style_adapter_predict"}  # the second: tests/test_world_style_adapter.py


def expected_conditions(path: Path) -> list[str]:
    study = Study(**yaml.safe_load(path.read_text())["data"]["init_args"]["study"])
    return [c.name for c in study.resolved_conditions()]


@pytest.mark.slow
@pytest.mark.parametrize("config", STUDY_CONFIGS, ids=lambda p: p.stem)
def test_study_config_runs_on_tiny_model(config, tmp_path, monkeypatch):
    if config.stem in NEEDS_FIT:
        pytest.skip(f"{config.name} needs a fitted adapter (run after fit in tests/test_study_configs.py)")
    monkeypatch.chdir(CONFIGS.parent)  # configs name their prompt files relative to the checkout
    cli_main([
        "predict", "--config", str(config), "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
        "--data.init_args.max_prompts", "1", "--data.init_args.max_seeds", "1",
    ])
    run = tmp_path / "lightning_logs" / config.stem
    rows = read_rows(run / "results.jsonl")
    conditions = expected_conditions(config)
    assert sorted(r["condition"] for r in rows) == sorted(conditions)  # one row per condition
    assert all((run / r["image"]).is_file() for r in rows)
    assert list(run.glob("events.out.tfevents.*"))


def test_study_configs_exist():
    names = {p.stem for p in STUDY_CONFIGS}
    for required in ("hidden_layer", "think_block", "refiner_skip", "refiner_depth", "refiner_layerwise",
                     "shift_steps", "long_prompt", "token_importance", "system_prompt", "baseline"):
        assert required in names
