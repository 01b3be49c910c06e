"""Seconds per image, peak GPU memory and caption length per condition.

Seconds and memory come from ``GeneratedBatch`` (the module measures them
around generation). A resumed item was not generated in this run: its seconds
and memory are taken from the results table of the earlier run (read once at
predict start, before the writer appends), or from ``extras["seconds"]`` /
``extras["peak_memory_mb"]`` when the module provides them. Items with no
measurement are left out of the means instead of counting as 0 s.

``caption_tokens`` (length of the caption features fed to the DiT) is added
to every item's metrics: the token-budget questions (Q2.5, Q7.1) need it. A
resumed item's count comes from its row, so per-condition means stay complete.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

from callbacks.metrics import ItemMetricCallback, read_results_table, run_dir_of


class TimingCallback(ItemMetricCallback):
    """Per-condition ``seconds_per_image`` (mean), ``peak_memory_mb`` (max), ``caption_tokens``."""

    reductions = {"peak_memory_mb": "max"}
    private_metrics = frozenset({"seconds_per_image", "peak_memory_mb"})
    table_columns = {"seconds_per_image": "seconds", "peak_memory_mb": "peak_memory_mb"}  # summaries read the table
    skip_warmup = frozenset({"seconds_per_image"})  # the first batch of a process compiles and warms up

    def __init__(self) -> None:
        super().__init__()
        self._previous: dict[str, dict[str, Any]] = {}

    @property
    def metric_names(self) -> list[str]:
        return ["seconds_per_image", "peak_memory_mb", "caption_tokens"]

    def prepare(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._previous = read_results_table(run_dir_of(trainer))

    def score(self, batch: Any, device: torch.device) -> dict[str, list[float | None]]:
        n = len(batch.items)
        resumed = list(getattr(batch, "resumed", None) or [False] * n)
        extras = getattr(batch, "extras", None) or {}
        peak_mb = None if batch.peak_memory_bytes is None else batch.peak_memory_bytes / 2**20
        seconds: list[float | None] = []
        memory: list[float | None] = []
        for i, item in enumerate(batch.items):
            if resumed[i]:
                row = self._previous.get(item.item_id, {})
                seconds.append(_pick(extras, "seconds", i, row.get("seconds")))
                memory.append(_pick(extras, "peak_memory_mb", i, row.get("peak_memory_mb")))
            else:
                seconds.append(batch.seconds_per_image)
                memory.append(peak_mb)
        embeddings = list(getattr(batch, "embeddings", None) or [])
        tokens: list[float | None] = []
        for i, item in enumerate(batch.items):
            features = embeddings[i] if i < len(embeddings) else None
            if features is not None:
                tokens.append(float(features.shape[0]))
            elif resumed[i]:  # a resumed item's features are not recomputed: its row has the count
                row = self._previous.get(item.item_id, {})
                recorded = row.get("metric.caption_tokens", row.get("num_embeddings"))
                tokens.append(None if recorded is None else float(recorded))
            else:
                tokens.append(None)
        return {"seconds_per_image": seconds, "peak_memory_mb": memory, "caption_tokens": tokens}

    def info(self, metric: str) -> dict[str, Any]:
        if metric == "caption_tokens":
            return {"definition": "rows of the caption features the DiT received"}
        return {"resumed_items": "taken from the earlier run's results table"}


def _pick(extras: dict[str, Any], key: str, index: int, fallback: Any) -> float | None:
    values = extras.get(key)
    value = values[index] if isinstance(values, list) and index < len(values) else fallback
    return None if value is None else float(value)
