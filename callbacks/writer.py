"""StudyWriter: PNGs + a results table, resumable and safe with several ranks.

Each rank appends rows to its own shard (results.rank<R>.jsonl) and writes PNGs
atomically (temporary file + rename), so a crash never leaves a half-written
image or row. At predict end rank 0 merges the shards into results.jsonl.

A re-run in the same folder resumes by settings (llm_dit.resume): a row is kept
only when its settings fingerprint matches the item's current settings and its
PNG reads back; kept rows are never rewritten (a metric callback added on the
re-run may add its column). Damaged files are reported in one line each and
their items made again, with the batch mates they were first made with. The
writer also owns the run's lifecycle: the folder lock, stop signals (finish the
batch, write, merge, exit), the dead-peer watchdog and the end-of-run summary.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import SaveConfigCallback
from PIL import Image

from callbacks.metrics import item_metrics
from callbacks.progress import use_new_items_bar
from callbacks.tensorboard_review import TensorBoardReview
from llm_dit.outputs import GeneratedBatch, load_png
from llm_dit.results.table import RESULTS, all_rows, finished_items, parse_row, read_rows, table_paths
from llm_dit.resume import (
    ResumePlan, changed_settings_error, fingerprint, item_settings, model_fingerprint_changes, model_settings,
    plan_resume,
)
from llm_dit.run_folder import RunFolderLock, components_fingerprint, run_dir, write_run_record
from llm_dit.run_guard import PeerWatchdog, RunStopped, StopSignals, is_peer_failure, peer_lost

RESUME_HINT = "The images written so far are kept: run the same command again to resume."


class StudyWriter(BasePredictionWriter):
    """Writes every generated item: PNG, results row, and a TensorBoard grid per condition.

    Args:
        log_grids: log an image grid per condition (prompts x seeds) to TensorBoard at the
            end; "auto" does so unless a TensorBoardReview callback already logs grids.
        peer_timeout_s: with several ranks, how long a silent peer rank is waited for
            before this rank stops too (the run can then be resumed).

    The run-folder policy (overwrite_changed, wait_for_lock) is set on the data module,
    where the command line reaches it: `--data.init_args.overwrite_changed true`.
    """

    def __init__(self, log_grids: bool | str = "auto", peer_timeout_s: float = 60.0) -> None:
        super().__init__(write_interval="batch")
        if log_grids not in (True, False, "auto"):
            raise ValueError(f"log_grids must be true, false or 'auto', got {log_grids!r}")
        if peer_timeout_s <= 0:
            raise ValueError(f"peer_timeout_s must be > 0 seconds, got {peer_timeout_s}")
        self.log_grids = log_grids
        self.peer_timeout_s = peer_timeout_s
        self._log_grids_now = False
        self._previous_rows: dict[str, dict[str, Any]] = {}
        self._plan = ResumePlan()
        self._finished: dict[str, Path] = {}
        self._model: dict[str, Any] | None = None
        self._model_fingerprint: str | None = None
        self._lock: RunFolderLock | None = None
        self._signals: StopSignals | None = None
        self._watchdog: PeerWatchdog | None = None
        self._new = 0
        self.written: set[str] = set()  # items whose PNG this process wrote (TensorBoardReview reuses its thumbnails)
        self.mismatched_mates: list[str] = []
        self._warmed_up = False  # this process has generated a batch (compile, warm-up done)

    # ----- setup: lock, repair, compare settings (before any model loads) ---------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        folder = run_dir(trainer)
        datamodule = getattr(trainer, "datamodule", None)
        if trainer.is_global_zero:
            self._lock = RunFolderLock(folder, wait=bool(getattr(datamodule, "wait_for_lock", False)))
            self._lock.acquire()
            for line in repair_tables(folder):
                print(f"warning: {line}", file=sys.stderr)
        # Past this barrier rank 0 holds the lock and the tables are repaired; only then may this
        # run's ranks write heartbeats into the folder.
        trainer.strategy.barrier("llm_dit_writer_setup")
        if trainer.world_size > 1:
            self._watchdog = PeerWatchdog(folder, trainer.global_rank, trainer.world_size, self.peer_timeout_s,
                                          RESUME_HINT)
            self._watchdog.start()
        self._previous_rows = all_rows(folder)
        self._model = model_settings(pl_module)
        items = getattr(datamodule, "items", None)
        if items is None:
            self._plan = ResumePlan(finished=finished_items(folder, self._previous_rows))
        else:
            self._plan = plan_resume(folder, items, self._previous_rows, self._model)
            if self._plan.changed and not getattr(datamodule, "overwrite_changed", False):
                raise changed_settings_error(folder, self._plan.changed)
            if trainer.is_global_zero:
                for line in self._plan.problems:
                    print(f"warning: {line}", file=sys.stderr)
            if hasattr(datamodule, "recorded_batches"):
                datamodule.recorded_batches = self._plan.batches
        self._signals = StopSignals()
        self._signals.install()

    # ----- start: the model is loaded; hand the finished items to the module -------------

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = run_dir(trainer)
        datamodule = getattr(trainer, "datamodule", None)
        items = getattr(datamodule, "items", None) or []
        self._model_fingerprint = components_fingerprint(pl_module)
        if self._model_fingerprint is not None:
            kept = [item for item in items if item.item_id in self._plan.finished]
            changed, ids = model_fingerprint_changes(kept, self._previous_rows, self._model_fingerprint)
            if changed and not getattr(datamodule, "overwrite_changed", False):
                raise changed_settings_error(folder, changed, " (model weights)")
            for item_id in ids:
                self._plan.finished.pop(item_id, None)
                self._plan.regenerate.add(item_id)
        if trainer.is_global_zero:
            write_run_record(trainer, pl_module, folder)
        self._finished = dict(self._plan.finished)
        pl_module.finished_items = self._module_finished(datamodule)
        self._new = 0
        self.written = set()
        self.mismatched_mates = []
        self._log_grids_now = self.log_grids is True
        if self.log_grids == "auto":
            self._log_grids_now = not any(isinstance(c, TensorBoardReview) for c in trainer.callbacks)
        if self._signals is not None and self._signals.received:
            self._stop(trainer)  # asked to stop while the model loaded: before the first image

    def _module_finished(self, datamodule: Any) -> dict[str, Path]:
        """Finished items the module may read back: not those sharing a batch with an item to
        make, because a batch is regenerated whole (its composition shapes the pixels)."""
        finished = dict(self._finished)
        batches = datamodule.batches() if hasattr(datamodule, "batches") else []
        for batch in batches:
            if any(item.item_id not in finished for item in batch):
                for item in batch:
                    finished.pop(item.item_id, None)
        return finished

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
        item_metrics(trainer, pl_module, prediction)  # every metric callback has scored this batch, whatever their order
        rows = []
        batch_ids = [item.item_id for item in prediction.items]
        warmup = not self._warmed_up and not all(prediction.resumed)  # timing summaries leave these rows out
        self._warmed_up = self._warmed_up or warmup
        for index, item in enumerate(prediction.items):
            if item.item_id in self._finished:
                if not prediction.resumed[index]:
                    self._check_mate(folder, item.item_id, prediction.images[index])
                row = self._extended_row(item.item_id, prediction, index)
                if row is not None:
                    rows.append(row)
                continue
            save_png_atomic(prediction.images[index], folder / item.image_name)
            self.written.add(item.item_id)
            settings = item_settings(item, self._model)
            rows.append({
                **result_row(prediction, index), "rank": trainer.global_rank, "batch": batch_ids,
                "settings_fingerprint": fingerprint(settings), "model": self._model,
                "model_fingerprint": self._model_fingerprint, "warmup": warmup,
            })
            self._new += 1
        if rows:
            append_rows(folder / f"results.rank{trainer.global_rank}.jsonl", rows)
        if self._signals is not None and self._signals.received:
            self._stop(trainer)

    def _extended_row(self, item_id: str, prediction: GeneratedBatch, index: int) -> dict[str, Any] | None:
        """A finished row gains the metrics it lacks (a callback added on this run); nothing it has changes."""
        previous = self._previous_rows.get(item_id, {})
        fresh = {f"metric.{name}": values[index] for name, values in prediction.metrics.items()}
        added = {key: value for key, value in fresh.items() if key not in previous and value is not None}
        if not added:
            return None
        row = {**previous, **added}
        self._previous_rows[item_id] = row
        return row

    def _check_mate(self, folder: Path, item_id: str, image: torch.Tensor) -> None:
        """A finished item regenerated with its batch: its pixels should equal the stored PNG."""
        stored = load_png(self._finished[item_id])
        if not torch.equal(_to_uint8(stored), _to_uint8(image)):
            self.mismatched_mates.append(item_id)
            print(f"warning: {item_id} came out different when its batch was made again "
                  "(the stored image is kept; see README, Determinism)", file=sys.stderr)

    def _stop(self, trainer: L.Trainer) -> None:
        """A stop signal arrived: the batch is written; merge (one rank) and leave with a resume hint."""
        folder = run_dir(trainer)
        signals = self._signals
        if trainer.world_size == 1:
            merge_shards(folder)
        done = len(all_rows(folder))
        print(f"stopped by {signals.received}: {self._new} new image(s) written on this rank, {done} rows in "
              f"{folder}; run the same command again to resume", file=sys.stderr, flush=True)
        self._release(clean=False)  # peers must notice this rank left
        raise RunStopped(signals.exit_code())

    # ----- end: merge and log ----------------------------------------------------------

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = run_dir(trainer)
        trainer.strategy.barrier("llm_dit_writer_merge")
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if trainer.is_global_zero:
            merge_shards(folder)
        if self._log_grids_now:
            self._log_grids(trainer)
        if trainer.is_global_zero:
            keep_newest_event_file(folder, trainer)
            items = getattr(getattr(trainer, "datamodule", None), "items", None)
            print(summary(folder, items, set(self._plan.finished)), file=sys.stderr, flush=True)
        self._release()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.world_size > 1 and is_peer_failure(exception):
            peer_lost(f"a peer rank stopped ({str(exception).splitlines()[0][:120]}); rank {trainer.global_rank} stops too.",
                      RESUME_HINT)
        if trainer.world_size == 1 and self._lock is not None and self._lock.held:
            merge_shards(run_dir(trainer))  # keep one tidy table after a crash (ranks > 1: the next run merges)
        self._release(clean=False)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._release(clean=False)  # after a normal end the watchdog was already stopped cleanly

    def _release(self, clean: bool = True) -> None:
        if self._signals is not None:
            self._signals.restore()
            self._signals = None
        if self._watchdog is not None:
            self._watchdog.stop(clean)
            self._watchdog = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _log_grids(self, trainer: L.Trainer) -> None:
        """Each rank's grids hold only its items, so grids are built by rank 0 from the PNGs."""
        if not trainer.is_global_zero or trainer.logger is None:
            return
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


def arrange_callbacks(trainer: L.Trainer, subcommand: str | None) -> None:
    """The CLI's callbacks for predict: adds a StudyWriter when none is configured and a progress
    bar that counts new images only, and puts SaveConfigCallback after the writers (so a run stopped
    by the writer's folder checks leaves config.yaml alone). Metric values do not depend on this
    order: the writer pulls them through callbacks.metrics.item_metrics."""
    if subcommand == "predict":
        use_new_items_bar(trainer)
    callbacks = trainer.callbacks
    writers = [c for c in callbacks if isinstance(c, BasePredictionWriter)]
    if subcommand == "predict" and not writers:
        writers = [StudyWriter()]
    savers = [c for c in callbacks if isinstance(c, SaveConfigCallback)]
    others = [c for c in callbacks if not isinstance(c, (BasePredictionWriter, SaveConfigCallback))]
    trainer.callbacks[:] = others + writers + savers


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    return (image.float().clamp(0, 1) * 255).round().to(torch.uint8)


def summary(folder: Path, items: list | None, resumed: set[str]) -> str:
    """End of predict: where the results are, new / resumed counts, and what to run next."""
    shown = _display_path(folder)
    ids = {row["item_id"] for row in read_rows(folder / RESULTS)}
    if items is not None:
        wanted = {item.item_id for item in items}
        done = ids & wanted
        counts = (f"{len(done - resumed)} new, {len(done & resumed)} resumed "
                  f"({len(done)} of {len(wanted)} items)")
    else:
        counts = f"{len(ids - resumed)} new, {len(ids & resumed)} resumed"
    return (f"results: {shown}  [{counts}]\n"
            f"next:    tensorboard --logdir {shown}\n"
            f"         python -m llm_dit.cli report {shown}")


def _display_path(folder: Path) -> str:
    try:
        return str(folder.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(folder)


def keep_newest_event_file(folder: Path, trainer: L.Trainer) -> None:
    """One TensorBoard event file per run folder: a resumed run logs every item again
    (resumed items are served to the callbacks), so older files only duplicate it."""
    current = _current_event_file(trainer)
    files = sorted(folder.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
    keep = current if current is not None and current.exists() else (files[-1] if files else None)
    for path in files:
        if keep is not None and path.resolve() != keep.resolve():
            path.unlink(missing_ok=True)


def _current_event_file(trainer: L.Trainer) -> Path | None:
    experiment = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
    writer = getattr(getattr(experiment, "file_writer", None), "event_writer", None)
    name = getattr(writer, "_file_name", None) or getattr(writer, "_filename", None)
    return Path(name) if name else None


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
        "prompt_transform": item.prompt_transform,
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


def repair_tables(folder: Path) -> list[str]:
    """Find torn lines in the tables, one message each, and fold the shards into a clean
    results.jsonl (call on rank 0 before any rank reads). The item of a torn row has no row
    left, so it is made again."""
    problems = []
    for path in table_paths(folder):
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if line.strip() and parse_row(line) is None:
                match = re.search(r'"item_id":\s*"([^"]+)"', line)
                which = f"; {match.group(1)} will be made again" if match else ""
                problems.append(f"{path.name} line {number} is torn (a crash or a full disk mid-write): dropped it{which}")
    if problems or any(folder.glob("results.rank*.jsonl")):
        merge_shards(folder)
    return problems


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
