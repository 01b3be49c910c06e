"""Issue #5's acceptance: the hidden-layer and shift-steps studies on the tiny model produce
TensorBoard grids, scalars and figures (read back with EventAccumulator) and a report with intervals."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from llm_dit.cli import cli_main
from llm_dit.report import write_report

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHRINK = ["--trainer.enable_progress_bar", "false", "--data.init_args.max_prompts", "2", "--data.init_args.max_seeds", "2"]


def run(config: str, root: Path, *extra: str) -> Path:
    cli_main(["predict", "--config", str(CONFIGS / config), "--trainer.default_root_dir", str(root), *SHRINK, *extra])
    return root / "lightning_logs" / Path(config).stem


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


@pytest.mark.slow
def test_hidden_layer_review(tmp_path):
    run_dir = run("hidden_layer.yaml", tmp_path)
    tags = events(run_dir).Tags()
    assert any(t.startswith("grids/") for t in tags["images"])
    assert any(t.startswith("figures/") and "cosine" in t for t in tags["images"])  # Q1.4 matrix
    assert any(t.startswith("figures/") and "heatmap" in t for t in tags["images"])  # prompt type x layer
    assert any(t.startswith("detail_score/") for t in tags["scalars"])
    report = write_report(run_dir).read_text()
    assert "95%" in report and "Q1.4" in report


@pytest.mark.slow
def test_shift_steps_review(tmp_path):
    run_dir = run(
        "shift_steps.yaml", tmp_path,
        "--data.init_args.study.variables", '{"sampler.shift": [2.0, 3.0], "sampler.steps": [4, 8]}',
    )
    tags = events(run_dir).Tags()
    assert any(t.startswith("figures/") and "pareto" in t for t in tags["images"])  # study 4's front
    assert any(t.startswith("seconds_per_image/") or t.startswith("seconds/") for t in tags["scalars"])
    report = write_report(run_dir).read_text()
    assert "shift=3.0,steps=8" in report and "Q4.1" in report
