"""Shared metric machinery: rank-safe metric states and the per-item metric callback base.

Study items are spread over ranks by an unrepeated distributed sampler, so one
rank may see a condition (or nothing at all) that another never sees. Every
number the callbacks aggregate therefore lives in torchmetrics ``Metric`` list
states, synced by ``compute()``. Two torchmetrics details shape this module:

* a rank with an empty list state sends ``torch.tensor([], dtype=metric.dtype)``
  (1-D, and ``metric.dtype`` falls back to float32 after ``.to(device)``), which
  breaks the gather of 2-D or integer states. ``TypedListMetric`` fills empty
  list states with a correctly typed, correctly shaped empty tensor first;
* strings cannot travel in tensors: condition names and prompt metadata go
  through ``gather_objects`` (``all_gather_object``), called on every rank in
  the same order as the metric syncs.

``ItemMetricCallback`` (base of the per-item metric callbacks): a subclass names
its metrics up front (``metric_names``) and implements ``score``. The base class

* scores the items generated in this batch and writes the values into
  ``GeneratedBatch.metrics``, once per batch, whichever asks first: its own
  ``on_predict_batch_end``, or a consumer of the values (the prediction writer,
  TensorBoardReview) calling ``item_metrics(trainer, pl_module, outputs)``
  before it reads them. That is the one path from metric callbacks to the
  results table (``metric.<name>`` columns), and it does not depend on the
  order of ``trainer.callbacks``;
* never scores a resumed item (an image read back from its 8-bit PNG): it hands
  on the values stored in that item's row when it was generated, so a resume
  cannot move a number;
* writes the per-condition summaries to ``set_metrics.json`` (kind ``item_mean``
  or ``item_max``) on rank 0 at predict end, computed from the whole results
  table (every rank's rows, earlier runs' rows included), never from this run's
  batches: a resume or a one-prompt smoke run over a finished study leaves the
  summaries exactly as one uninterrupted run would.

Summaries read the table through ``table_rows``: rows in a fixed order
(condition index, prompt index, seed), so sums are the same whatever order the
items were generated in. Rows marked ``"warmup": true`` (the first generated
batch of a process: compile, allocator warm-up) are left out of timing summaries.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import Metric

from llm_dit.results.table import all_rows

SET_METRICS_FILE = "set_metrics.json"


class TypedListMetric(Metric):
    """A ``Metric`` whose list states keep their dtype and trailing shape when empty."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._list_specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}

    def add_list_state(self, name: str, dtype: torch.dtype, trailing_shape: tuple[int, ...] = ()) -> None:
        """Declare a concatenated list state of rows shaped ``trailing_shape``."""
        self.add_state(name, default=[], dist_reduce_fx="cat")
        self._list_specs[name] = (dtype, tuple(trailing_shape))

    def _empty(self, name: str) -> Tensor:
        dtype, shape = self._list_specs[name]
        return torch.empty((0, *shape), dtype=dtype, device=self.device)

    def _sync_dist(self, *args: Any, **kwargs: Any) -> None:
        for name in self._list_specs:
            if isinstance(getattr(self, name), list) and not getattr(self, name):
                setattr(self, name, [self._empty(name)])
        super()._sync_dist(*args, **kwargs)

    def column(self, name: str) -> Tensor:
        """The concatenated state ``name`` (synced when called inside ``compute``)."""
        value = getattr(self, name)
        if isinstance(value, Tensor):
            return value.to(self._list_specs[name][0])
        if not value:
            return self._empty(name)
        return torch.cat([v.to(self._list_specs[name][0]) for v in value])


class ConditionValues(TypedListMetric):
    """Per-item values keyed by (condition_index, prompt_index, seed); NaN = missing.

    ``compute()`` returns the synced columns; ``summarize`` reduces them per
    condition. Keys are float64 so seeds up to 2**53 stay exact.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("condition", "prompt", "seed", "value"):
            self.add_list_state(name, torch.float64)

    def update(self, condition: Tensor, prompt: Tensor, seed: Tensor, value: Tensor) -> None:
        for name, column in (("condition", condition), ("prompt", prompt), ("seed", seed), ("value", value)):
            getattr(self, name).append(torch.as_tensor(column, dtype=torch.float64, device=self.device).reshape(-1))

    def compute(self) -> dict[str, Tensor]:
        return {name: self.column(name).cpu() for name in ("condition", "prompt", "seed", "value")}


class KeyedImages(TypedListMetric):
    """Small uint8 copies of images keyed by (condition, prompt, seed), gathered across ranks.

    Used where a statistic needs images that may sit on different ranks: seed
    pairs for LPIPS diversity, prompt x seed grids for TensorBoard.
    """

    def __init__(self, size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = size
        self.add_list_state("keys", torch.float64, (3,))
        self.add_list_state("pixels", torch.uint8, (3, size, size))

    def update(self, keys: Tensor, images: Tensor) -> None:
        """``keys``: [N, 3] (condition, prompt, seed); ``images``: [N, 3, H, W] in [0, 1]."""
        self.keys.append(torch.as_tensor(keys, dtype=torch.float64, device=self.device).reshape(-1, 3))
        self.pixels.append(to_uint8(resize_square(images.to(self.device), self.size)))

    def compute(self) -> tuple[Tensor, Tensor]:
        return self.column("keys").cpu(), self.column("pixels")


def resize_square(images: Tensor, size: int) -> Tensor:
    """Resize [N, 3, H, W] images to size x size (antialiased bilinear; aspect not kept)."""
    images = images.float()
    if images.shape[-2:] == (size, size):
        return images
    return torch.nn.functional.interpolate(
        images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )


def to_uint8(images: Tensor) -> Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def item_keys(items: Iterable[Any], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """(condition_index, prompt_index, seed) columns of a batch of ``StudyItem``s."""
    items = list(items)
    make = lambda values: torch.tensor(values, dtype=torch.float64, device=device)  # noqa: E731
    return (
        make([it.condition_index for it in items]),
        make([it.prompt_index for it in items]),
        make([it.seed for it in items]),
    )


def as_column(values: Iterable[float | None], device: torch.device | str = "cpu") -> Tensor:
    """A float64 column with NaN where a value is missing."""
    return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float64, device=device)


def summarize(columns: Mapping[str, Tensor], reduce: str = "mean") -> dict[int, tuple[float, int]]:
    """Per condition index: (mean or max of the non-NaN values, count)."""
    out: dict[int, tuple[float, int]] = {}
    # torchmetrics squeezes one-element outputs to 0-d: flatten so one-item runs work too.
    cond, value = columns["condition"].reshape(-1), columns["value"].reshape(-1)
    for index in sorted({int(c) for c in cond.tolist()}):
        vals = value[(cond == index) & ~torch.isnan(value)]
        if len(vals):
            stat = vals.max() if reduce == "max" else vals.mean()
            out[index] = (float(stat), len(vals))
    return out


def compute_quietly(metric: Metric) -> Any:
    """``metric.compute()`` without torchmetrics' warning for a rank that saw no update."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
        return metric.compute()


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (just ``[obj]`` outside a process group)."""
    if not distributed():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def gather_dict(local: Mapping[Any, Any]) -> dict[Any, Any]:
    """Union of a dict across ranks (first rank wins on conflicts)."""
    merged: dict[Any, Any] = {}
    for part in reversed(gather_objects(dict(local))):
        merged.update(part)
    return merged


def run_dir_of(trainer: Any) -> Path | None:
    """The run directory: the logger's ``log_dir`` (None without a logger)."""
    logger = getattr(trainer, "logger", None)
    log_dir = getattr(logger, "log_dir", None) if logger is not None else None
    return Path(log_dir) if log_dir else None


def update_set_metrics(run_dir: Path, entries: Mapping[str, Any]) -> Path:
    """Merge ``entries`` into ``run_dir/set_metrics.json`` (atomic replace; call on rank 0).

    Format: ``{metric: {"kind": ..., "conditions": {name: {"value", "n", ...}}, "info": {...}}}``.

    Item summaries (kind ``item_*``) come from the whole results table and
    replace the earlier entry. Set metrics (FID, LPIPS diversity) are computed
    from the images a run saw: a condition's earlier value computed over more
    images (``n``) is kept, so a smoke run over a finished study cannot replace
    a 250-image FID with a one-image one.
    """
    path = Path(run_dir) / SET_METRICS_FILE
    data = json.loads(path.read_text()) if path.exists() else {}
    for name, entry in entries.items():
        previous = data.get(name)
        if str(entry.get("kind", "")).startswith("item_") or not isinstance(previous, dict):
            data[name] = entry
            continue
        conditions = dict(entry.get("conditions") or {})
        for condition, old in (previous.get("conditions") or {}).items():
            new = conditions.get(condition)
            if new is None or (old.get("n") or 0) > (new.get("n") or 0):
                conditions[condition] = old
        data[name] = {**entry, "conditions": conditions}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, allow_nan=False, default=str))
    os.replace(tmp, path)
    return path


def read_results_table(run_dir: Path | None) -> dict[str, dict[str, Any]]:
    """Rows of results.jsonl and its per-rank shards by item_id ({} when absent); for resumed items.

    The same reading as every summary (`llm_dit.results.table.all_rows`): an item made again
    (a changed setting, a damaged PNG) is represented by its newest row, not its first.
    """
    return {} if run_dir is None else all_rows(Path(run_dir))


def table_rows(trainer: Any, local_rows: Iterable[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The merged results table, on rank 0 ([] elsewhere): what every summary is computed from.

    Collective (call it on every rank): gathers each rank's ``local_rows``
    (rows a callback built from this run's batches: item_id, condition,
    condition_index, prompt_index, seed and its columns), which also waits for
    every rank, so each rank's table shard is complete. Then rank 0 reads the
    merged table and the shards the way the writer merges them. A table row
    wins over a local row of the same item field by field; local rows fill in
    only what no table holds (a run without a StudyWriter), so with the writer
    the result is exactly the table, whichever items this run generated.
    Rows come sorted by (condition index, prompt index, seed, item id), so every
    summary sums in the same order on every run.
    """
    parts = gather_objects(list(local_rows))
    run_dir = run_dir_of(trainer)
    if not getattr(trainer, "is_global_zero", True):
        return []
    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        for row in part:
            merged.setdefault(str(row["item_id"]), {}).update(row)
    if run_dir is not None:
        for item_id, row in all_rows(run_dir).items():
            merged[str(item_id)] = {**merged.get(str(item_id), {}), **row}
    return sorted_rows(merged.values())


def item_row(item: Any) -> dict[str, Any]:
    """The key columns of an item's results row (for ``table_rows``' local rows)."""
    return {
        "item_id": item.item_id, "condition": item.condition, "condition_index": item.condition_index,
        "prompt_index": item.prompt_index, "seed": item.seed,
    }


def sorted_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in the table's canonical order (condition index, prompt index, seed, item id)."""
    key = lambda r: (r.get("condition_index", 0), r.get("prompt_index", 0), r.get("seed", 0), str(r.get("item_id")))  # noqa: E731
    return sorted(rows, key=key)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def column_summary(
    rows: Iterable[dict[str, Any]], column: str, reduce: str = "mean", skip_warmup: bool = False
) -> dict[str, dict[str, float | int]]:
    """``{condition: {"value", "n"}}``: mean (or max) of the numeric cells of ``column`` per condition.

    Conditions appear in row order; rows without a number in ``column`` (and
    warm-up rows when ``skip_warmup``) are left out, never counted as 0.
    """
    values: dict[str, list[float]] = {}
    for row in rows:
        if skip_warmup and row.get("warmup"):
            continue
        value = row.get(column)
        if is_number(value):
            values.setdefault(str(row.get("condition")), []).append(float(value))
    return {
        name: {"value": max(vals) if reduce == "max" else math.fsum(vals) / len(vals), "n": len(vals)}
        for name, vals in values.items()
    }


class RunSummaryCallback(Callback):
    """A callback that writes run-level summaries at predict end (set_metrics.json,
    embedding_analysis.json), from the whole results table.

    ``summarize`` runs once per predict run: from this callback's own ``on_predict_end``, or
    earlier when a reader of those files (TensorBoardReview) calls ``run_summaries`` first. So
    what the reader sees never depends on the order of ``trainer.callbacks``. ``summarize`` is
    collective (it gathers across ranks); ``run_summaries`` calls every summary in the
    callbacks' order, the same on every rank.
    """

    _summarized = False

    def summarize(self, trainer: Trainer, pl_module: LightningModule) -> None:
        raise NotImplementedError

    def summarize_once(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._summarized:
            return
        self._summarized = True
        self.summarize(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._summarized = False

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.summarize_once(trainer, pl_module)


def run_summaries(trainer: Trainer, pl_module: LightningModule) -> None:
    """Make every summary callback of ``trainer`` write its files now (each once per run)."""
    for callback in getattr(trainer, "callbacks", None) or []:
        if isinstance(callback, RunSummaryCallback):
            callback.summarize_once(trainer, pl_module)


class ItemMetricCallback(RunSummaryCallback):
    """Scores every generated item of every predict batch; subclasses implement ``score``."""

    #: reduction per metric for the per-condition summary ("mean" unless listed)
    reductions: dict[str, str] = {}
    #: metrics aggregated per condition but not added to ``GeneratedBatch.metrics``
    private_metrics: frozenset[str] = frozenset()
    #: results-table column of a metric, where it is not ``metric.<name>``
    table_columns: dict[str, str] = {}
    #: metrics whose summaries leave out warm-up rows (timing)
    skip_warmup: frozenset[str] = frozenset()

    def __init__(self) -> None:
        super().__init__()
        self._stored: dict[str, dict[str, Any]] = {}  # results rows of earlier runs, by item id
        self._local: dict[str, dict[str, Any]] = {}  # this run's items as table rows (see table_rows)
        self._summary: dict[str, dict[str, dict[str, float | int]]] | None = None
        self._warned = False
        self._scored: weakref.ref | None = None  # the batch output scored last (see item_metrics)

    # -- subclass interface -------------------------------------------------
    @property
    def metric_names(self) -> list[str]:
        raise NotImplementedError

    def enabled(self) -> bool:
        """False when the metric cannot run (e.g. no weights); then nothing is scored."""
        return True

    def prepare(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Load models / move them to ``pl_module.device`` (called at predict start)."""

    def score(self, batch: Any, device: torch.device) -> dict[str, list[float | None]]:
        """Per-item values for each name in ``metric_names`` (None = not applicable)."""
        raise NotImplementedError

    def info(self, metric: str) -> dict[str, Any]:
        """Provenance of ``metric``, stored next to its summary in set_metrics.json."""
        return {}

    # -- helpers --------------------------------------------------------------
    def warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            rank_zero_warn(message)

    # -- Lightning hooks ------------------------------------------------------
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self.prepare(trainer, pl_module)
        self._summary = None
        self._stored = read_results_table(run_dir_of(trainer))
        self._local = {}

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.score_batch(outputs, pl_module)

    def already_scored(self, outputs: Any) -> bool:
        return self._scored is not None and self._scored() is outputs

    def score_batch(self, outputs: Any, pl_module: LightningModule) -> None:
        """Score ``outputs`` into ``outputs.metrics`` unless this batch was scored already."""
        if outputs is None or not outputs.items or self.already_scored(outputs):
            return
        self._scored = weakref.ref(outputs)
        resumed = list(getattr(outputs, "resumed", None) or [False] * len(outputs.items))
        fresh = [i for i, done in enumerate(resumed) if not done]
        scores = self.score(subset(outputs, fresh), pl_module.device) if fresh and self.enabled() else {}
        for item in outputs.items:
            self._local.setdefault(item.item_id, item_row(item))
        for name in self.metric_names:
            generated = iter(scores.get(name) or [None] * len(fresh))
            values: list[float | None] = []
            for item, done in zip(outputs.items, resumed):
                # A resumed item keeps what was stored when it was generated (None if nothing was).
                value = self._stored.get(item.item_id, {}).get(self.column(name)) if done else next(generated)
                values.append(float(value) if is_number(value) else None)
                self._local[item.item_id][self.column(name)] = values[-1]
            if name not in self.private_metrics and (any(v is not None for v in values) or self.enabled()):
                outputs.metrics[name] = values

    def summarize(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rows = table_rows(trainer, self._local.values())
        run_dir = run_dir_of(trainer)
        if not trainer.is_global_zero or run_dir is None:
            return
        self._summary = self.table_summary(rows)
        if self._summary:
            update_set_metrics(
                run_dir,
                {
                    name: {"kind": "item_" + self.reductions.get(name, "mean"), "conditions": conds, "info": self.info(name)}
                    for name, conds in self._summary.items()
                },
            )

    def column(self, metric: str) -> str:
        """The results-table column holding ``metric``."""
        return self.table_columns.get(metric, f"metric.{metric}")

    def table_summary(self, rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | int]]]:
        """``{metric: {condition: {"value", "n"}}}`` from results-table rows (metrics without values left out)."""
        summary = {}
        for name in self.metric_names:
            conds = column_summary(
                rows, self.column(name), self.reductions.get(name, "mean"), skip_warmup=name in self.skip_warmup
            )
            if conds:
                summary[name] = conds
        return summary

    def condition_summary(self) -> dict[str, dict[str, dict[str, float | int]]]:
        """The summary written at predict end (rank 0; {} elsewhere and before predict end)."""
        return self._summary or {}


def item_metrics(trainer: Trainer, pl_module: LightningModule, outputs: Any) -> dict[str, list[float | None]]:
    """``outputs.metrics`` with every per-item metric callback of ``trainer`` in it.

    Call before reading ``outputs.metrics`` (the writer and TensorBoardReview do): each
    ``ItemMetricCallback`` scores a batch once, here or in its own batch-end hook, whichever
    comes first, so the values are complete whatever the order of ``trainer.callbacks``.
    """
    for callback in getattr(trainer, "callbacks", None) or []:
        if isinstance(callback, ItemMetricCallback):
            callback.score_batch(outputs, pl_module)
    return outputs.metrics


def subset(batch: Any, indices: list[int]) -> Any:
    """A shallow copy of a ``GeneratedBatch`` holding only the items at ``indices``."""
    if len(indices) == len(batch.items):
        return batch
    part = copy.copy(batch)
    pick = lambda values: [values[i] for i in indices if i < len(values)]  # noqa: E731
    part.items = pick(batch.items)
    part.images = batch.images[indices]
    for name in ("resumed", "embeddings", "encodings"):
        if getattr(batch, name, None) is not None:
            setattr(part, name, pick(getattr(batch, name)))
    part.metrics = {}
    part.extras = {k: pick(v) if isinstance(v, list) else v for k, v in (getattr(batch, "extras", None) or {}).items()}
    return part
