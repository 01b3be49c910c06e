"""Summaries never change with re-runs (issue 15.6).

One folder goes through a killed run (the first batch only), a one-item smoke
run over the half-done study, the resume that finishes it, and a one-prompt
smoke run over the finished study. It must end with the same summaries as one
uninterrupted run in another folder: set_metrics.json, embedding_analysis.json
(refiner drift included), the figures (byte for byte) and the TensorBoard
scalars and HParams of the last run. Timing is measured wall time, so its
values differ between any two runs: it is checked against its own oracle (the
mean of the table's non-warm-up seconds) instead.

Kills fall on batch boundaries (batch_size 2, two prompts x two seeds): a
resumed item is then generated in the batch it was generated in the first time,
which is what makes the images, and so every per-item number, identical.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from callbacks.writer import read_rows
from llm_dit.cli import cli_main
from llm_dit.provenance import RANDOM_WEIGHTS_NOTE

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "refiner_skip.yaml"
STUDY = ["--model.weights", "tiny-random", "--data.init_args.max_prompts", "2", "--data.init_args.max_seeds", "2", "--data.init_args.batch_size", "2"]
TIMING = {"seconds_per_image", "peak_memory_mb"}


def predict(root: Path, *extra: str) -> Path:
    cli_main([
        "predict", "--config", str(CONFIG), "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false", *STUDY, *extra,
    ])
    return root / "lightning_logs" / "refiner_skip"


def last_scalars(folder: Path) -> dict[str, float]:
    """tag -> value in the newest events file of `folder` (what the last run wrote)."""
    newest = max(folder.glob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    values = {}
    for event in EventFileLoader(str(newest)).Load():
        for value in event.summary.value:
            if value.HasField("tensor") and value.metadata.plugin_data.plugin_name == "scalars":
                values[value.tag] = float(value.tensor.float_val[0])
    return values


def last_texts(folder: Path) -> dict[str, str]:
    newest = max(folder.glob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    texts = {}
    for event in EventFileLoader(str(newest)).Load():
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == "text":
                texts[value.tag] = b"".join(value.tensor.string_val).decode()
    return texts


def without_timing(values: dict[str, float]) -> dict[str, float]:
    return {tag: v for tag, v in values.items() if not any(t in tag for t in TIMING | {"seconds"})}


def summaries(run: Path) -> dict[str, object]:
    set_metrics = json.loads((run / "set_metrics.json").read_text())
    return {
        "set_metrics": {k: v for k, v in set_metrics.items() if k not in TIMING},
        "embedding_analysis": json.loads((run / "embedding_analysis.json").read_text()),
        "figures": {p.name: p.read_bytes() for p in sorted((run / "figures").glob("*.png"))},
        "scalars": without_timing(last_scalars(run)),
        "hparams": {d.name: without_timing(last_scalars(d)) for d in sorted((run / "hparams").iterdir())},
    }


@pytest.mark.slow  # six tiny-model predict runs: ~1 min on 2 CPU cores
def test_kills_resumes_and_smoke_runs_end_with_the_summaries_of_one_run(tmp_path):
    whole = summaries(predict(tmp_path / "whole"))

    folder = tmp_path / "interrupted"
    predict(folder, "--data.init_args.limit_items", "2")  # killed after its first batch
    predict(folder, "--data.init_args.limit_items", "1")  # a smoke run over the half-done study
    predict(folder)  # the resume that finishes it
    run = predict(folder, "--data.init_args.max_prompts", "1", "--data.init_args.max_seeds", "1")  # smoke again
    after = summaries(run)

    assert after["set_metrics"] == whole["set_metrics"]
    assert after["embedding_analysis"] == whole["embedding_analysis"]
    assert after["embedding_analysis"]["drift"]["series"].keys() == {"default", "skip"}  # Q3.2 survives resumes
    assert {"drift.png", "heatmap_prompt_type_detail_score.png"} <= after["figures"].keys()
    assert after["figures"].keys() == whole["figures"].keys() and after["figures"] == whole["figures"]
    assert after["scalars"] == whole["scalars"] and after["scalars"]  # TensorBoard scalars
    assert after["hparams"] == whole["hparams"] and all(after["hparams"].values())  # HParams metrics
    assert "cosine_matrix.png" not in after["figures"]  # one shared encoding: a matrix of 1.0 says nothing

    assert RANDOM_WEIGHTS_NOTE in last_texts(run).get("provenance/text_summary", "")  # the text tab says so

    rows = read_rows(run / "results.jsonl")
    assert len(rows) == 8 and len({r["item_id"] for r in rows}) == 8
    # Timing: its own oracle, the mean of the table's seconds without the warm-up rows.
    warm = [r for r in rows if r.get("warmup")]
    # the first generated batch of each process: run 1's first batch, run 3's first new batch
    assert {r["item_id"] for r in warm} == {f"default/p00{p}_s{s}" for p in (0, 1) for s in (42, 123)}
    timing = json.loads((run / "set_metrics.json").read_text())["seconds_per_image"]["conditions"]
    for condition, entry in timing.items():
        seconds = [r["seconds"] for r in rows if r["condition"] == condition and not r.get("warmup")]
        assert entry["n"] == len(seconds) and entry["value"] == pytest.approx(math.fsum(seconds) / len(seconds))
