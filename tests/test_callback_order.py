"""Per-item metrics and run summaries do not depend on the order of trainer.callbacks.

Metric callbacks fill `GeneratedBatch.metrics`; the writer and TensorBoardReview pull them
through `callbacks.metrics.item_metrics`, and TensorBoardReview makes every summary callback
write set_metrics.json / embedding_analysis.json (`run_summaries`) before it reads them. A plain
`L.Trainer` (the Python API: no CLI arranges anything) with the writer first and the metric
callbacks last must write the same table and summaries as the order the CLI used to enforce.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks.detail import DetailScoreCallback
from callbacks.embedding_analysis import EmbeddingAnalysis
from callbacks.metrics import ItemMetricCallback, item_metrics
from callbacks.tensorboard_review import TensorBoardReview
from callbacks.timing import TimingCallback
from callbacks.writer import StudyWriter, read_rows
from llm_dit.data import StudyDataModule
from llm_dit.module import ZImageModule
from llm_dit.outputs import GeneratedBatch
from llm_dit.study import Study

STUDY = dict(
    name="order",
    kind="hidden_layer",
    prompts=["A red circle", "A blue square"],
    seeds=[3],
    sampler={"steps": 2, "height": 32, "width": 32},
    control="layer=-2",
    conditions=[{"name": "layer=-2", "encoding": {"hidden_layer": -2}},
                {"name": "layer=-1", "encoding": {"hidden_layer": -1}}],
)


def run(root: Path, order: str) -> tuple[Path, TensorBoardReview]:
    review = TensorBoardReview(hparams=False)
    callbacks = [DetailScoreCallback(), TimingCallback(), EmbeddingAnalysis(), review, StudyWriter(log_grids=False)]
    if order == "writer_first":
        callbacks = callbacks[::-1]
    elif order == "shuffled":
        random.Random(0).shuffle(callbacks)
    trainer = L.Trainer(accelerator="cpu", devices=1, default_root_dir=root, enable_progress_bar=False,
                        logger=TensorBoardLogger(root, name="lightning_logs", version="order"), callbacks=callbacks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.predict(ZImageModule(weights="tiny-random"), datamodule=StudyDataModule(Study(**STUDY), batch_size=2),
                        return_predictions=False)
    return root / "lightning_logs" / "order", review


def item_values(folder: Path) -> dict[str, dict[str, float]]:
    """Deterministic per-item metric columns (seconds and memory vary between runs)."""
    keep = ("metric.detail_score", "metric.caption_tokens")
    return {row["item_id"]: {key: row.get(key) for key in keep} for row in read_rows(folder / "results.jsonl")}


@pytest.mark.slow  # three tiny runs: ~30 s on 2 CPU cores
def test_metrics_and_summaries_do_not_depend_on_callback_order(tmp_path):
    expected, expected_review = run(tmp_path / "canonical", "canonical")
    values = item_values(expected)
    assert len(values) == 4 and all(v["metric.detail_score"] > 0 and v["metric.caption_tokens"] > 0
                                    for v in values.values())
    set_metrics = json.loads((expected / "set_metrics.json").read_text())
    analysis = json.loads((expected / "embedding_analysis.json").read_text())
    assert set_metrics["detail_score"]["conditions"] and expected_review.run.set_metrics == set_metrics
    for order in ("writer_first", "shuffled"):
        folder, review = run(tmp_path / order, order)
        assert item_values(folder) == values, order
        assert json.loads((folder / "set_metrics.json").read_text())["detail_score"] == set_metrics["detail_score"]
        assert json.loads((folder / "embedding_analysis.json").read_text()) == analysis, order
        # TensorBoardReview read the summaries of this run, though it ran before the callbacks that write them.
        assert review.run.set_metrics["detail_score"] == set_metrics["detail_score"], order
        assert review.run.analysis == analysis, order


class Counting(ItemMetricCallback):
    """Counts how often it scores: once per batch, however many consumers ask."""

    metric_names = ["count"]

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def score(self, batch, device):
        self.calls += 1
        return {"count": [float(self.calls)] * len(batch.items)}


def test_item_metrics_scores_each_batch_once_whoever_asks():
    items = Study(**STUDY).items()[:2]
    batch = GeneratedBatch(items=items, images=torch.zeros(2, 3, 8, 8), seconds_per_image=0.1,
                           peak_memory_bytes=None, resumed=[False, False])
    metric = Counting()
    trainer = type("T", (), {"callbacks": [metric]})()
    module = type("M", (), {"device": torch.device("cpu")})()
    assert item_metrics(trainer, module, batch) == {"count": [1.0, 1.0]}
    metric.on_predict_batch_end(trainer, module, batch, items, 0)
    item_metrics(trainer, module, batch)
    assert metric.calls == 1 and batch.metrics == {"count": [1.0, 1.0]}
    other = GeneratedBatch(items=items, images=torch.zeros(2, 3, 8, 8), seconds_per_image=0.1,
                           peak_memory_bytes=None, resumed=[False, True])
    metric.on_predict_batch_end(trainer, module, other, items, 1)
    assert metric.calls == 2 and other.metrics == {"count": [2.0, None]}  # a resumed item is never rescored
