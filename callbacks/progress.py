"""A predict progress bar in images made, not batches served.

A resumed run still serves its finished items (read back from disk, so metric
callbacks see the whole study); Lightning's bar would count them as work and go
0 -> 100 % in a blink. This one counts only the images this rank generates.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class NewItemsProgressBar(TQDMProgressBar):
    """TQDM bar whose total is the number of images this rank will generate."""

    def _count(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """At the first batch: by then the writer has told the module which items are finished."""
        finished = getattr(pl_module, "finished_items", {}) or {}
        self._total, self._resumed = 0, 0
        for loader in trainer.predict_dataloaders if isinstance(trainer.predict_dataloaders, list) else [trainer.predict_dataloaders]:
            dataset = getattr(loader, "dataset", None)
            batches = getattr(dataset, "batches", None)
            if batches is None:
                continue
            for index in iter(loader.sampler):
                for item in batches[index]:
                    if item.item_id in finished:
                        self._resumed += 1
                    else:
                        self._total += 1

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                               batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        self._count(trainer, pl_module)
        bar = self.predict_progress_bar
        bar.reset(total=self._total)
        bar.set_description("Generating")
        if self._resumed:
            bar.set_postfix_str(f"{self._resumed} resumed")

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        resumed = getattr(outputs, "resumed", None)
        if resumed is None or self.predict_progress_bar is None:
            return
        made = sum(1 for done in resumed if not done)
        if made:
            self.predict_progress_bar.update(made)


def use_new_items_bar(trainer: L.Trainer) -> None:
    """Swap Lightning's default predict bar (exactly TQDMProgressBar) for NewItemsProgressBar."""
    for index, callback in enumerate(trainer.callbacks):
        if type(callback) is TQDMProgressBar:
            trainer.callbacks[index] = NewItemsProgressBar(refresh_rate=callback.refresh_rate)
