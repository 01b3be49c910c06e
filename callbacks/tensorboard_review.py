"""Everything a person reviews in TensorBoard after a study, written at predict end.

Lightning forbids ``self.log`` in predict hooks, so this callback writes
through ``trainer.logger.experiment`` (a ``SummaryWriter``) on rank 0. Every
number, grid and figure comes from the merged results table (every rank's rows
and every earlier run's rows in the run folder: ``callbacks.metrics.table_rows``),
``set_metrics.json`` and ``embedding_analysis.json``, never from the batches of
this run alone: a resume or a one-prompt smoke run over a finished study writes
the same values an uninterrupted run does. Timing leaves out warm-up rows.

* ``provenance`` text (and one console line at predict start) when the weights
  are random (``llm_dit.provenance``): the images are noise;

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

Its place among the callbacks does not matter: per-item values come through
``callbacks.metrics.item_metrics``, and the summaries it shows are read from the
results table at predict end, after every metric callback has written its own
(``on_predict_end`` runs the metric callbacks' ``table_rows`` collectives first only
in the sense that each callback computes from the table, not from the others).

Grid cells are made while the images are generated, so the end of a run reads no image back:
a worker thread turns each image of the first ``grid_prompts`` prompts into the thumbnail of
its PNG (rounded to 8 bits as the writer rounds it, then resized exactly as a PNG read back
would be), overlapping with generation. Only rows whose PNG this process neither wrote (the
writer's ``written``) nor read back (a resumed item) are read from disk at the end: rows of
earlier runs that this run did not serve, and batch mates whose stored image was kept.
The cells are therefore those of the table's PNGs, whichever run made them.

``StudyWriter(log_grids=True)`` logs full-resolution grids of every prompt under
``grid/<condition>``; next to this callback, ``log_grids=False`` avoids the duplicate.
"""

from __future__ import annotations

import json
import math
import re
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torch import Tensor

from llm_dit.results import figures
from callbacks.metrics import (
    KeyedImages,
    compute_quietly,
    gather_objects,
    item_keys,
    item_metrics,
    item_row,
    resize_square,
    run_dir_of,
    run_summaries,
    table_rows,
    to_uint8,
)
from llm_dit.provenance import RANDOM_WEIGHTS_NOTE, weights_are_random
from llm_dit.results.run_data import RunData
from llm_dit.results.tables import quality_metric, study_figures


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
        self.run: RunData | None = None  # what was written, kept for inspection and tests
        self._weights: str | None = None
        self._local: list[dict[str, Any]] = []  # this run's items as table rows (used only where no table row exists)
        self._thumbs: KeyedImages | None = None  # grid cells made from this run's images, gathered across ranks
        self._memory: dict[tuple[int, int, int], Tensor] = {}
        self._same_as_png: set[str] = set()  # item ids whose thumbnail in _memory is their PNG's
        self._pending: list[tuple[list[list[float]], Future]] = []  # thumbnails the worker is making
        self._served: set[str] = set()  # items whose image this run read back from their PNG (resumed)
        self._worker: ThreadPoolExecutor | None = None

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop_worker()
        self._reset()
        self._thumbs = KeyedImages(self.thumbnail_size).to(pl_module.device)
        self._weights = getattr(getattr(pl_module, "hparams", None), "weights", None)
        if trainer.is_global_zero and self._weights is not None and weights_are_random(self._weights):
            print(f"llm-dit: {RANDOM_WEIGHTS_NOTE} (weights: {self._weights})", file=sys.stderr)

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
        item_metrics(trainer, pl_module, outputs)  # whatever the callbacks' order
        resumed = list(getattr(outputs, "resumed", None) or [False] * len(outputs.items))
        for i, item in enumerate(outputs.items):
            row = {**_local_row(item), **{f"metric.{n}": v[i] for n, v in outputs.metrics.items() if i < len(v)}}
            row["seconds"] = None if resumed[i] else outputs.seconds_per_image
            self._local.append(row)
        self._served.update(item.item_id for item, done in zip(outputs.items, resumed) if done)
        show = [i for i, item in enumerate(outputs.items) if item.prompt_index < self.grid_prompts]
        if show:
            keys = torch.stack(item_keys([outputs.items[i] for i in show], "cpu"), dim=1).tolist()
            images = outputs.images[show]  # a copy (list index): the worker owns it
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-dit-thumbnails")
            self._pending.append((keys, self._worker.submit(png_thumbnails, images, self.thumbnail_size)))

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._collect_thumbnails()
        run_summaries(trainer, pl_module)  # set_metrics.json and embedding_analysis.json first, whatever the order
        rows = table_rows(trainer, self._local)  # collective: every rank waits here
        keys, pixels = compute_quietly(self._thumbs)  # collective too
        same_as_png = set().union(*gather_objects(sorted(self._served | written_by(trainer))))  # collective
        run_dir = run_dir_of(trainer)
        if not trainer.is_global_zero or run_dir is None or not rows:
            return
        self._memory = {tuple(int(k) for k in key): pixels[i].cpu() for i, key in enumerate(keys.tolist())}
        self._same_as_png = same_as_png
        self.run = RunData(
            rows,
            _read_json(run_dir, "study.json") or {},
            _read_json(run_dir, "set_metrics.json") or {},
            _read_json(run_dir, "embedding_analysis.json") or {},
            run_dir,
        )
        experiment = getattr(trainer.logger, "experiment", None)
        writer = experiment if hasattr(experiment, "add_image") else None
        if writer is not None:
            if self._weights is not None and weights_are_random(self._weights):
                writer.add_text("provenance", f"**{RANDOM_WEIGHTS_NOTE}** (weights: `{self._weights}`)", global_step=0)
            self._write_grids(writer, run_dir)
            self._memory = {}
            self._write_scalars(writer, self.run)
            if self.hparams:
                self._write_hparams(writer, self.run)
        for name, fig in self._figures(self.run).items():
            path = figures.save_figure(fig, run_dir / "figures" / f"{name}.png")
            if writer is not None:  # the file's pixels: drawing the figure again would double its cost
                writer.add_image(f"figures/{name}", figures.png_pixels(path), global_step=0, dataformats="HWC")
        if writer is not None:
            writer.flush()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._stop_worker()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._stop_worker()

    # -- thumbnails made during the run -------------------------------------------
    def _collect_thumbnails(self) -> None:
        """Wait for the worker's thumbnails and add them to the (rank-synced) grid cells."""
        for keys, future in self._pending:
            pixels = future.result()
            # already thumbnail-sized uint8: KeyedImages' resize is a no-op and its rounding gives back these bytes
            self._thumbs.update(torch.tensor(keys, dtype=torch.float64), pixels.float() / 255.0)
        self._pending = []
        self._stop_worker()

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None

    # -- writers ----------------------------------------------------------------
    def _write_grids(self, writer: Any, run_dir: Path) -> None:
        """Per condition: the lowest prompts x seeds of the table, from their PNGs.

        A cell without a PNG (a run without a StudyWriter) shows this run's thumbnail.
        """
        for name in self.run.conditions:
            rows = {(int(r["prompt_index"]), int(r["seed"])): r for r in self.run.rows_of(name)}
            prompts = sorted({p for p, _ in rows})[: self.grid_prompts]
            seeds = sorted({s for _, s in rows})[: self.grid_seeds]
            keys, cells = [], []
            for prompt in prompts:
                for seed in seeds:
                    if (cell := self._thumbnail(run_dir, rows.get((prompt, seed)))) is not None:
                        keys.append([0, prompt, seed])
                        cells.append(cell)
            if not cells:
                continue
            grid = image_grid(torch.tensor(keys, dtype=torch.float64), torch.stack(cells), prompts, seeds)
            writer.add_image(f"grids/{name}", grid, 0, dataformats="CHW")
            legend = "\n".join(f"- row {r}: p{p:03d} {self._prompt_text(p)}" for r, p in enumerate(prompts))
            writer.add_text(f"grids/{name}", f"columns = seeds {seeds}\n\n{legend}", global_step=0)

    def _thumbnail(self, run_dir: Path, row: dict[str, Any] | None) -> Tensor | None:
        """uint8 [3, size, size] of the row's PNG: made during the run where this run's image is that
        PNG's content, else read from the file; without a PNG, this run's thumbnail; else None."""
        if row is None:
            return None
        made = self._memory.get((int(row["condition_index"]), int(row["prompt_index"]), int(row["seed"])))
        if made is not None and str(row.get("item_id")) in self._same_as_png:
            return made
        path = run_dir / str(row.get("image"))
        if row.get("image") and path.is_file():
            return png_thumbnail(_png_pixels(path), self.thumbnail_size)
        return made

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
    """metric -> condition -> mean: item metrics from the rows, set metrics from set_metrics.json.

    Seconds per image leave out warm-up rows (compile, first batch of a process).
    """
    out: dict[str, dict[str, float]] = {}
    for metric in run.item_metrics():
        for condition in run.conditions:
            cells = run.cells(metric, condition)
            if cells:
                out.setdefault(metric, {})[condition] = math.fsum(cells.values()) / len(cells)
    for name, entry in run.set_metrics.items():
        for condition, value in (entry.get("conditions") or {}).items():
            if value.get("value") is not None:
                out.setdefault(name, {}).setdefault(condition, float(value["value"]))
    if "seconds_per_image" not in out:
        for condition in run.conditions:
            cells = run.cells("seconds", condition, where=lambda row: not row.get("warmup"))
            if cells:
                out.setdefault("seconds_per_image", {})[condition] = math.fsum(cells.values()) / len(cells)
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


def _local_row(item: Any) -> dict[str, Any]:
    """A results.jsonl-shaped row of an item's settings (for runs without a results table)."""
    encoding = getattr(item, "encoding", None)
    metadata = item.metadata or {}
    row = {
        **item_row(item),
        "shift": getattr(item.sampler, "shift", None),
        "steps": getattr(item.sampler, "steps", None),
        "encoding": {k: getattr(encoding, k, None) for k in ("max_length", "long_prompt_mode")},
        "original_prompt": str(item.original_prompt)[:500],
        "prompt_type": item.prompt_type,
        "metadata": {k: metadata[k] for k in ("construction", "target_tokens", "max_length") if k in metadata},
    }
    row.update({f"var.{k}": v for k, v in dict(item.variables).items()})
    return row


def _indices(run: RunData) -> dict[str, int]:
    return {r["condition"]: r["condition_index"] for r in run.rows}


def _hparam_value(value: Any) -> int | float | str | bool:
    if isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    return str(value)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(name))[:80]


def png_thumbnail(pixels: np.ndarray, size: int) -> Tensor:
    """uint8 [3, size, size] grid cell of a PNG's pixels (uint8 [H, W, 3], as PIL reads them).

    The one path for both a PNG read from disk and an image about to be saved as one
    (png_thumbnails): the same array layout and operations give the same bytes.
    """
    image = torch.from_numpy(np.ascontiguousarray(pixels).astype(np.float32) / 255.0).permute(2, 0, 1)
    return to_uint8(resize_square(image[None], size))[0]


def png_thumbnails(images: Tensor, size: int) -> Tensor:
    """uint8 [N, 3, size, size]: the grid cells of the PNGs that `images` ([N, 3, H, W] in [0, 1])
    are saved as, without writing or reading them: rounded to 8 bits as the writer rounds
    (callbacks.writer.save_png_atomic), then png_thumbnail."""
    pixels = (images.detach().cpu().permute(0, 2, 3, 1).float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return torch.stack([png_thumbnail(image, size) for image in pixels])


def written_by(trainer: Trainer) -> set[str]:
    """Items whose PNG a prediction writer of `trainer` wrote in this process (StudyWriter.written)."""
    sets = [getattr(c, "written", None) for c in getattr(trainer, "callbacks", None) or []
            if isinstance(c, BasePredictionWriter)]
    return set().union(*(found for found in sets if isinstance(found, set)))


def _png_pixels(path: Path) -> np.ndarray:
    """A PNG's pixels as uint8 [H, W, 3]."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _read_json(run_dir: Path | None, name: str) -> Any:
    path = Path(run_dir) / name if run_dir else None
    return json.loads(path.read_text()) if path is not None and path.exists() else None
