"""A predict progress bar in images made, not batches served.

A resumed run still serves its finished items (read back from disk, so metric
callbacks see the whole study); Lightning's bar would count them as work and go
0 -> 100 % in a blink. This one counts only the images this rank generates.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar


def count_new_items(trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[int, int]:
    """(images this rank will generate, items it reads back), from its share of the batches.

    Call at the first batch: by then the writer has told the module which items are finished."""
    finished = getattr(pl_module, "finished_items", {}) or {}
    loaders = trainer.predict_dataloaders
    new = resumed = 0
    for loader in loaders if isinstance(loaders, list) else [loaders]:
        batches = getattr(getattr(loader, "dataset", None), "batches", None)
        if batches is None:
            continue
        for index in iter(loader.sampler):
            for item in batches[index]:
                if item.item_id in finished:
                    resumed += 1
                else:
                    new += 1
    return new, resumed


def made_in(outputs: Any) -> int:
    """Images generated in a batch (its resumed items were read back)."""
    return sum(1 for done in getattr(outputs, "resumed", None) or [] if not done)


class NewItemsProgressBar(TQDMProgressBar):
    """TQDM bar whose total is the number of images this rank will generate."""

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                               batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        self._total, self._resumed = count_new_items(trainer, pl_module)
        bar = self.predict_progress_bar
        bar.reset(total=self._total)
        bar.set_description("Generating")
        if self._resumed:
            bar.set_postfix_str(f"{self._resumed} resumed")

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        made = made_in(outputs)
        if made and self.predict_progress_bar is not None:
            self.predict_progress_bar.update(made)


class NewItemsRichProgressBar(RichProgressBar):
    """The same count on Lightning's Rich bar (its default when `rich` is installed)."""

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                               batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.is_disabled or not self.has_dataloader_changed(dataloader_idx):
            return
        self._total, self._resumed = count_new_items(trainer, pl_module)
        self._made = 0
        if self.predict_progress_bar_id is not None:
            self.progress.update(self.predict_progress_bar_id, advance=0, visible=False)
        description = "Generating" + (f" ({self._resumed} resumed)" if self._resumed else "")
        self.predict_progress_bar_id = self._add_task(self._total, description)
        self.refresh()

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.is_disabled or self.predict_progress_bar_id is None:
            return
        self._made += made_in(outputs)
        self._update(self.predict_progress_bar_id, self._made)


def use_new_items_bar(trainer: L.Trainer) -> None:
    """Swap Lightning's default predict bar (exactly TQDMProgressBar or RichProgressBar) for ours."""
    for index, callback in enumerate(trainer.callbacks):
        if type(callback) is TQDMProgressBar:
            trainer.callbacks[index] = NewItemsProgressBar(refresh_rate=callback.refresh_rate)
        elif type(callback) is RichProgressBar:
            trainer.callbacks[index] = NewItemsRichProgressBar(refresh_rate=callback.refresh_rate, leave=callback._leave,
                                                               theme=callback.theme)
