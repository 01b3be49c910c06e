"""Any study config runs on world prompts through command-line overrides, scored by the scene-score callback.

The README's "Synthetic world" section shows the same command. The images of
the random-weight tiny model are colour noise, so the scores are at the
floor (the chance numbers are in benchmarks/NOTES.md): what is tested is the
plumbing from prompt file to results table, set_metrics.json and report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from callbacks.writer import read_rows
from llm_dit.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_refiner_study_runs_on_world_prompts(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cli_main([
        "predict", "--config", "configs/refiner_skip.yaml",
        "--data.init_args.study.prompts_file", "configs/prompts/world_mixed.txt",
        "--data.init_args.study.name", "refiner_skip_world",
        "--trainer.callbacks+=callbacks.scene_score.SceneScoreCallback",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--data.init_args.max_prompts", "2", "--data.init_args.max_seeds", "1",
    ])
    run = tmp_path / "lightning_logs" / "refiner_skip_world"
    rows = read_rows(run / "results.jsonl")
    assert len(rows) == 4 and {r["prompt_type"] for r in rows} == {"one_object"}
    assert all(r["metric.world_all"] in (0.0, 1.0) and r["metric.world_presence"] is not None for r in rows)
    summary = json.loads((run / "set_metrics.json").read_text())
    assert set(summary["world_all"]["conditions"]) == {"default", "skip"}
    cli_main(["report", str(run)])
    report = (run / "report.md").read_text()
    assert "### world_all" in report
    assert "`world_all`: " in report and "chance = " in report  # the chance level is printed with the metric
