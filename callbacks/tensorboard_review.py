"""Everything a person reviews in TensorBoard after a study, written at predict end.

Lightning forbids ``self.log`` in predict hooks, so this callback writes
through ``trainer.logger.experiment`` (a ``SummaryWriter``) on rank 0, after
every number has been synced across ranks:

* ``grids/<condition>``: thumbnail grid per condition, rows = prompts, columns = seeds
  (capped at ``grid_prompts`` x ``grid_seeds``);
* ``<metric>/<condition>`` scalars, and ``by_condition/<metric>`` with the
  condition index as step (one line across conditions);
* an HParams table, one session per condition (its variables and metric
  means), written under ``<run dir>/hparams/<nnn>_<condition>`` so the events
  stay inside the run directory;
* figures (also saved as PNG in ``<run dir>/figures/``): prompt type x
  condition heatmaps (study 1), the shift x steps Pareto front (study 4),
  compression ratio vs quality per mode (Q5.6), and the cosine-similarity
  matrix / drift per layer when ``embedding_analysis.json`` is in the run dir.

Place it after the metric callbacks. It reads every name in
``GeneratedBatch.metrics`` (whoever added it) and asks callbacks that have a
``condition_summary()`` (FID, LPIPS diversity, timing) for their set metrics.
``StudyWriter(log_grids=True)`` logs full-resolution grids of every prompt under
``grid/<condition>``; next to this callback, ``log_grids=False`` avoids the duplicate.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from callbacks import figures
from callbacks.metrics import (
    ConditionValues,
    KeyedImages,
    as_column,
    compute_quietly,
    gather_objects,
    item_keys,
    run_dir_of,
)
from llm_dit.report.run_data import RunData
from llm_dit.report.tables import quality_metric, study_figures


class TensorBoardReview(Callback):
    """Image grids, scalars, HParams and figures in TensorBoard (see module docstring).

    Args:
        grid_prompts: prompts (lowest prompt indices) shown per condition grid.
        grid_seeds: seeds (lowest) shown per grid.
        thumbnail_size: grid cell size in pixels.
        quality_metric: per-item metric for heatmaps, Pareto and compression
            figures (default: first of clip_score, clip_score_random_init, detail_score).
        hparams: write the HParams table.
    """

    def __init__(
        self,
        grid_prompts: int = 8,
        grid_seeds: int = 4,
        thumbnail_size: int = 128,
        quality_metric: str | None = None,
        hparams: bool = True,
    ) -> None:
        super().__init__()
        self.grid_prompts, self.grid_seeds, self.thumbnail_size = grid_prompts, grid_seeds, thumbnail_size
        self.quality_metric, self.hparams = quality_metric, hparams
        self._reset()

    def _reset(self) -> None:
        self._rows: list[tuple[int, int, int, dict[str, float | None]]] = []
        self._conditions: dict[int, dict[str, Any]] = {}
        self._prompts: dict[int, dict[str, Any]] = {}
        self._thumbs: KeyedImages | None = None
        self.run: RunData | None = None  # the synced data, kept for inspection and tests

    # -- collection (every rank) ---------------------------------------------
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset()
        self._thumbs = KeyedImages(self.thumbnail_size).to(pl_module.device)

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if outputs is None or not outputs.items:
            return
        resumed = list(getattr(outputs, "resumed", None) or [False] * len(outputs.items))
        for i, item in enumerate(outputs.items):
            values = {f"metric.{name}": vals[i] for name, vals in outputs.metrics.items() if i < len(vals)}
            values["seconds"] = None if resumed[i] else outputs.seconds_per_image
            self._rows.append((item.condition_index, item.prompt_index, item.seed, values))
            self._conditions.setdefault(item.condition_index, _condition_info(item))
            self._prompts.setdefault(item.prompt_index, _prompt_info(item))
        show = [i for i, item in enumerate(outputs.items) if item.prompt_index < self.grid_prompts]
        if show:
            keys = torch.stack(item_keys([outputs.items[i] for i in show], pl_module.device), dim=1)
            self._thumbs.update(keys, outputs.images[show])

    # -- sync (every rank) then write (rank 0) ---------------------------------
    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        run_dir = run_dir_of(trainer)
        self.run = self._synced(trainer, pl_module.device, run_dir)
        keys, pixels = compute_quietly(self._thumbs)
        if not trainer.is_global_zero or run_dir is None:
            return
        experiment = getattr(trainer.logger, "experiment", None)
        writer = experiment if hasattr(experiment, "add_image") else None
        if writer is not None:
            self._write_grids(writer, keys, pixels.cpu())
            self._write_scalars(writer, self.run)
            if self.hparams:
                self._write_hparams(writer, self.run)
        for name, fig in self._figures(self.run).items():
            figures.save_figure(fig, run_dir / "figures" / f"{name}.png")
            if writer is not None:
                writer.add_figure(f"figures/{name}", fig, global_step=0, close=True)
        if writer is not None:
            writer.flush()

    def _synced(self, trainer: Trainer, device: torch.device, run_dir: Path | None) -> RunData:
        """The rows of every rank (as results.jsonl rows) plus the callbacks' set metrics."""
        parts = gather_objects((self._conditions, self._prompts, sorted({n for *_, v in self._rows for n in v})))
        conditions: dict[int, dict[str, Any]] = {}
        prompts: dict[int, dict[str, Any]] = {}
        for c, p, _ in reversed(parts):
            conditions.update(c)
            prompts.update(p)
        rows: dict[tuple[int, int, int], dict[str, Any]] = {}
        for column in sorted({n for *_, names in parts for n in names}):
            state = ConditionValues().to(device)
            if self._rows:
                cond, prompt, seed = (torch.tensor([r[k] for r in self._rows], dtype=torch.float64) for k in range(3))
                state.update(cond, prompt, seed, as_column([r[3].get(column) for r in self._rows]))
            synced = compute_quietly(state)
            for c, p, s, v in zip(*(synced[k].reshape(-1).tolist() for k in ("condition", "prompt", "seed", "value"))):
                key = (int(c), int(p), int(s))
                row = rows.setdefault(key, _row(key, conditions, prompts))
                if not math.isnan(v):
                    row[column] = v
        set_metrics: dict[str, Any] = {}
        for callback in trainer.callbacks:
            if callback is not self and hasattr(callback, "condition_summary"):
                for name, per_condition in callback.condition_summary().items():
                    set_metrics[name] = {
                        "kind": "set" if name.startswith("fid") else "item",
                        "conditions": per_condition,
                    }
        study = _read_json(run_dir, "study.json") or {
            "conditions": [{"name": c["name"], "variables": c["variables"]} for _, c in sorted(conditions.items())]
        }
        return RunData(
            sorted(rows.values(), key=lambda r: (r["condition_index"], r["prompt_index"], r["seed"])),
            study,
            set_metrics,
            _read_json(run_dir, "embedding_analysis.json") or {},
            run_dir,
        )

    # -- writers ----------------------------------------------------------------
    def _write_grids(self, writer: Any, keys: Tensor, pixels: Tensor) -> None:
        for name, index in _indices(self.run).items():
            mask = keys[:, 0] == index
            if not mask.any():
                continue
            prompts = sorted({int(p) for p in keys[mask][:, 1].tolist()})[: self.grid_prompts]
            seeds = sorted({int(s) for s in keys[mask][:, 2].tolist()})[: self.grid_seeds]
            writer.add_image(
                f"grids/{name}", image_grid(keys[mask], pixels[mask], prompts, seeds), 0, dataformats="CHW"
            )
            legend = "\n".join(f"- row {r}: p{p:03d} {self._prompt_text(p)}" for r, p in enumerate(prompts))
            writer.add_text(f"grids/{name}", f"columns = seeds {seeds}\n\n{legend}", global_step=0)

    def _prompt_text(self, prompt_index: int) -> str:
        row = next((r for r in (self.run.rows if self.run else []) if r["prompt_index"] == prompt_index), {})
        return str(row.get("original_prompt", ""))[:120]

    def _write_scalars(self, writer: Any, run: RunData) -> None:
        index = _indices(run)
        for metric, per_condition in condition_means(run).items():
            for condition, value in per_condition.items():
                writer.add_scalar(f"{metric}/{condition}", value, global_step=0)
                writer.add_scalar(f"by_condition/{metric}", value, global_step=index[condition])
        table = "| index | condition | variables |\n| --- | --- | --- |\n" + "\n".join(
            f"| {index[c]} | {c} | {run.variables(c)} |" for c in run.conditions if c in index
        )
        writer.add_text("conditions", table, global_step=0)

    def _write_hparams(self, writer: Any, run: RunData) -> None:
        means = condition_means(run)
        index = _indices(run)
        for condition in run.conditions:
            if condition not in index:
                continue
            hparams = {"condition": condition, "condition_index": index[condition]}
            hparams.update({f"var.{k}": _hparam_value(v) for k, v in run.variables(condition).items()})
            metrics = {f"hparam/{m}": v[condition] for m, v in means.items() if condition in v}
            if metrics:
                writer.add_hparams(hparams, metrics, run_name=f"hparams/{index[condition]:03d}_{_safe(condition)}")

    def _figures(self, run: RunData) -> dict[str, Any]:
        quality = quality_metric(run, self.quality_metric)
        heatmaps = [m for m in (quality, "detail_score") if m in run.item_metrics()]
        return study_figures(run, quality, heatmaps)


def condition_means(run: RunData) -> dict[str, dict[str, float]]:
    """metric -> condition -> mean: item metrics from the rows, set metrics from the callbacks."""
    out: dict[str, dict[str, float]] = {}
    for metric in run.item_metrics():
        for condition in run.conditions:
            cells = run.cells(metric, condition)
            if cells:
                out.setdefault(metric, {})[condition] = sum(cells.values()) / len(cells)
    for name, entry in run.set_metrics.items():
        for condition, value in (entry.get("conditions") or {}).items():
            if value.get("value") is not None:
                out.setdefault(name, {}).setdefault(condition, float(value["value"]))
    if "seconds_per_image" not in out:
        for condition in run.conditions:
            cells = run.cells("seconds", condition)
            if cells:
                out.setdefault("seconds_per_image", {})[condition] = sum(cells.values()) / len(cells)
    return out


def image_grid(keys: Tensor, pixels: Tensor, prompts: list[int], seeds: list[int], pad: int = 2) -> Tensor:
    """uint8 [3, H, W] grid: row r = prompts[r], column c = seeds[c]; missing cells stay dark."""
    size = pixels.shape[-1]
    grid = torch.zeros(3, len(prompts) * (size + pad) + pad, len(seeds) * (size + pad) + pad, dtype=torch.uint8)
    where = {(int(p), int(s)): i for i, (_, p, s) in enumerate(keys.tolist())}
    for r, prompt in enumerate(prompts):
        for c, seed in enumerate(seeds):
            if (prompt, seed) in where:
                top, left = pad + r * (size + pad), pad + c * (size + pad)
                grid[:, top : top + size, left : left + size] = pixels[where[(prompt, seed)]]
    return grid


def _condition_info(item: Any) -> dict[str, Any]:
    encoding = getattr(item, "encoding", None)
    return {
        "name": item.condition,
        "variables": dict(item.variables),
        "shift": getattr(item.sampler, "shift", None),
        "steps": getattr(item.sampler, "steps", None),
        "encoding": {k: getattr(encoding, k, None) for k in ("max_length", "long_prompt_mode")},
    }


def _prompt_info(item: Any) -> dict[str, Any]:
    metadata = item.metadata or {}
    return {
        "original_prompt": str(item.original_prompt)[:500],
        "prompt_type": item.prompt_type,
        "metadata": {k: metadata[k] for k in ("construction", "target_tokens", "max_length") if k in metadata},
    }


def _row(
    key: tuple[int, int, int], conditions: dict[int, dict[str, Any]], prompts: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """A results.jsonl-shaped row for one synced item."""
    condition, prompt, seed = key
    info = conditions.get(condition, {"name": str(condition), "variables": {}})
    row = {"condition": info["name"], "condition_index": condition, "prompt_index": prompt, "seed": seed}
    row.update({k: info.get(k) for k in ("shift", "steps", "encoding")})
    row.update({f"var.{k}": v for k, v in info["variables"].items()})
    row.update(prompts.get(prompt, {}))
    return row


def _indices(run: RunData) -> dict[str, int]:
    return {r["condition"]: r["condition_index"] for r in run.rows}


def _hparam_value(value: Any) -> int | float | str | bool:
    if isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    return str(value)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(name))[:80]


def _read_json(run_dir: Path | None, name: str) -> Any:
    path = Path(run_dir) / name if run_dir else None
    return json.loads(path.read_text()) if path is not None and path.exists() else None
