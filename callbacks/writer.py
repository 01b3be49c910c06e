"""StudyWriter: PNGs + a results table, resumable and safe with several ranks.

Each rank appends rows to its own shard (results.rank<R>.jsonl) and writes PNGs
atomically (temporary file + rename), so a crash never leaves a half-written
image or row. At predict end rank 0 merges the shards into results.jsonl. On the
next run, items whose row and PNG both exist are handed to the module as
finished: it reads them back instead of generating them again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from llm_dit.outputs import GeneratedBatch
from llm_dit.run import run_dir, write_run_record

RESULTS = "results.jsonl"


class StudyWriter(BasePredictionWriter):
    """Writes every generated item: PNG, results row, and a TensorBoard grid per condition.

    Args:
        log_grids: log an image grid per condition (prompts x seeds) to TensorBoard at the
            end; "auto" does so unless a TensorBoardReview callback already logs grids.
    """

    def __init__(self, log_grids: bool | str = "auto") -> None:
        super().__init__(write_interval="batch")
        if log_grids not in (True, False, "auto"):
            raise ValueError(f"log_grids must be true, false or 'auto', got {log_grids!r}")
        self.log_grids = log_grids
        self._log_grids_now = False
        self._previous_rows: dict[str, dict[str, Any]] = {}
        self._warmed_up = False  # this process has generated a batch (compile, warm-up done)

    # ----- start: find what is done ---------------------------------------------------

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = run_dir(trainer)
        if trainer.is_global_zero:
            write_run_record(trainer, pl_module, folder)
        self._previous_rows = all_rows(folder)
        pl_module.finished_items = finished_items(folder, self._previous_rows)
        self._log_grids_now = self.log_grids is True
        if self.log_grids == "auto":
            from callbacks.tensorboard_review import TensorBoardReview

            self._log_grids_now = not any(isinstance(c, TensorBoardReview) for c in trainer.callbacks)

    # ----- per batch --------------------------------------------------------------------

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: GeneratedBatch,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        folder = run_dir(trainer)
        rows = []
        warmup = not self._warmed_up and not all(prediction.resumed)  # timing summaries leave these rows out
        self._warmed_up = self._warmed_up or warmup
        for index, item in enumerate(prediction.items):
            if prediction.resumed[index]:
                # Metrics recomputed on a finished item (e.g. a callback added on this run)
                # are merged into its earlier row.
                fresh = {f"metric.{name}": values[index] for name, values in prediction.metrics.items()}
                previous = self._previous_rows.get(item.item_id, {})
                if any(previous.get(key) != value for key, value in fresh.items()):
                    rows.append({**previous, **fresh})
                continue
            save_png_atomic(prediction.images[index], folder / item.image_name)
            rows.append({**result_row(prediction, index), "rank": trainer.global_rank, "warmup": warmup})
        if rows:
            append_rows(folder / f"results.rank{trainer.global_rank}.jsonl", rows)

    # ----- end: merge and log ----------------------------------------------------------

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = run_dir(trainer)
        trainer.strategy.barrier("llm_dit_writer_merge")
        if trainer.is_global_zero:
            merge_shards(folder)
        if self._log_grids_now:
            self._log_grids(trainer)

    def _log_grids(self, trainer: L.Trainer) -> None:
        """Each rank's grids hold only its items, so grids are built by rank 0 from the PNGs."""
        if not trainer.is_global_zero or trainer.logger is None:
            return
        from llm_dit.module import load_png

        folder = run_dir(trainer)
        rows = read_rows(folder / RESULTS)
        by_condition: dict[str, list[dict]] = {}
        for row in rows:
            by_condition.setdefault(row["condition"], []).append(row)
        experiment = trainer.logger.experiment
        for index, (condition, condition_rows) in enumerate(by_condition.items()):
            grid = image_grid(
                [(r["prompt_index"], r["seed"], load_png(folder / r["image"])) for r in condition_rows]
            )
            experiment.add_image(f"grid/{condition}", grid, global_step=0)
        experiment.flush()


# ----- helpers, also used by the report and the tests ------------------------------------


def result_row(prediction: GeneratedBatch, index: int) -> dict[str, Any]:
    """One results-table row: the item, its settings, time, memory, metrics and extras."""
    item = prediction.items[index]
    encoding = prediction.encodings[index] if prediction.encodings else None
    row: dict[str, Any] = {
        "item_id": item.item_id,
        "study": item.study,
        "condition": item.condition,
        "condition_index": item.condition_index,
        "prompt_index": item.prompt_index,
        "prompt": item.prompt,
        "original_prompt": item.original_prompt,
        "prompt_type": item.prompt_type,
        "seed": item.seed,
        **{key: value for key, value in item.sampler.to_dict().items()},
        "encoding": item.encoding.to_dict(),
        "surgery": list(item.surgery),
        "image": item.image_name,
        "seconds": prediction.seconds_per_image,
        "peak_memory_mb": None if prediction.peak_memory_bytes is None else prediction.peak_memory_bytes / 2**20,
        "num_tokens": None if encoding is None else int(encoding.num_tokens),
        "num_embeddings": None if encoding is None else int(encoding.embeddings.shape[0]),
        "metadata": item.metadata,
    }
    row.update({f"var.{key}": value for key, value in item.variables.items()})
    row.update({f"metric.{name}": values[index] for name, values in prediction.metrics.items()})
    row.update({f"extra.{name}": values[index] for name, values in prediction.extras.items()})
    return row


def save_png_atomic(image: torch.Tensor, path: Path) -> None:
    """[3,H,W] in [0,1] -> 8-bit PNG, rounded as diffusers' numpy_to_pil does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (image.permute(1, 2, 0).float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    temporary = path.with_suffix(".tmp.png")
    Image.fromarray(array).save(temporary)
    os.replace(temporary, path)


def append_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append JSON lines and fsync: a crash loses at most the batch being written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a torn last line (crash mid-write) is ignored."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def all_rows(folder: Path) -> dict[str, dict[str, Any]]:
    """Every row of the merged table and all shards, one per item id.

    Later rows update earlier ones field by field (shards after the merged table),
    so metrics added to a finished item on a re-run are kept.
    """
    rows: dict[str, dict[str, Any]] = {}
    for path in [folder / RESULTS, *sorted(folder.glob("results.rank*.jsonl"))]:
        for row in read_rows(path):
            rows.setdefault(row["item_id"], {}).update(row)
    return rows


def finished_items(folder: Path, rows: dict[str, dict[str, Any]] | None = None) -> dict[str, Path]:
    """Item id -> PNG path for items whose row and image both exist."""
    rows = all_rows(folder) if rows is None else rows
    return {item_id: folder / row["image"] for item_id, row in rows.items() if (folder / row["image"]).is_file()}


def merge_shards(folder: Path) -> None:
    """Fold every shard into results.jsonl (one row per item), atomically."""
    rows = all_rows(folder)
    temporary = folder / (RESULTS + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        for row in sorted(rows.values(), key=lambda r: (r["condition_index"], r["prompt_index"], r["seed"])):
            handle.write(json.dumps(row, default=str) + "\n")
    os.replace(temporary, folder / RESULTS)
    for shard in folder.glob("results.rank*.jsonl"):
        shard.unlink()


def image_grid(cells: list[tuple[int, int, torch.Tensor]]) -> torch.Tensor:
    """Arrange (prompt_index, seed, image) cells as rows = prompts, columns = seeds."""
    prompts = sorted({p for p, _, _ in cells})
    seeds = sorted({s for _, s, _ in cells})
    height = max(img.shape[1] for _, _, img in cells)
    width = max(img.shape[2] for _, _, img in cells)
    grid = torch.ones(3, height * len(prompts), width * len(seeds))
    for prompt, seed, image in cells:
        row, column = prompts.index(prompt), seeds.index(seed)
        grid[:, row * height : row * height + image.shape[1], column * width : column * width + image.shape[2]] = image
    return grid
