"""LightningDataModules: study items for `predict` (image+caption data for `fit` lives in fit_data.py)."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from llm_dit.study import Study, StudyItem


class StudyBatches(Dataset):
    """Pre-grouped batches: every batch holds items of one condition and image size.

    The dataset's unit is a whole batch, so Lightning's distributed sampler splits
    batches (not items) across ranks without padding duplicates into the results.
    """

    def __init__(self, batches: list[list[StudyItem]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> list[StudyItem]:
        return self.batches[index]


def group_into_batches(
    items: list[StudyItem], batch_size: int, recorded: dict[str, tuple[str, ...]] | None = None
) -> list[list[StudyItem]]:
    """Consecutive items with the same batch key, at most `batch_size` per batch.

    `recorded` (item id -> the ids it was generated with, from an earlier run's rows)
    keeps those batches as they were: batch composition changes the last bits of an
    image, so an item made again must be made with the same batch mates. Items with no
    record are grouped as usual, starting a new batch after each recorded one.
    """
    recorded = recorded or {}
    by_id = {item.item_id: item for item in items}
    used: set[str] = set()
    batches: list[list[StudyItem]] = []
    open_batch = False
    for item in items:
        if item.item_id in used:
            continue
        mates = [by_id.get(i) for i in recorded.get(item.item_id, ())]
        if mates and all(m is not None and m.item_id not in used and m.batch_key() == item.batch_key() for m in mates):
            batches.append(mates)
            used.update(m.item_id for m in mates)
            open_batch = False
            continue
        if open_batch and len(batches[-1]) < batch_size and batches[-1][0].batch_key() == item.batch_key():
            batches[-1].append(item)
        else:
            batches.append([item])
            open_batch = True
        used.add(item.item_id)
    return batches


def _unwrap(batch: list[list[StudyItem]]) -> list[StudyItem]:
    return batch[0]


class StudyDataModule(L.LightningDataModule):
    """Serves a study's items for `trainer.predict`.

    Args:
        study: the study spec (prompts, seeds, conditions; see llm_dit.study.Study).
        batch_size: images generated together (same condition); seeds batch well.
        max_prompts: use only the first N prompts (every condition and seed kept).
        max_seeds: use only the first N seeds.
        limit_items: run only the first N items (condition-major order).
        overwrite_changed: when the run folder holds items made with other settings
            (the YAML changed since), regenerate just those items instead of stopping.
        wait_for_lock: when another run is using the run folder, wait for it to end
            instead of stopping.
    """

    def __init__(
        self,
        study: Study,
        batch_size: int = 4,
        max_prompts: int | None = None,
        max_seeds: int | None = None,
        limit_items: int | None = None,
        overwrite_changed: bool = False,
        wait_for_lock: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.study = study if isinstance(study, Study) else Study(**study)
        self.batch_size = batch_size
        self.limit_items = limit_items
        self.overwrite_changed = overwrite_changed
        self.wait_for_lock = wait_for_lock
        self.recorded_batches: dict[str, tuple[str, ...]] = {}  # set by the StudyWriter from the run folder
        for name, value in (("max_prompts", max_prompts), ("max_seeds", max_seeds), ("limit_items", limit_items)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.items = self.study.items(max_prompts, max_seeds)  # validates: bad input fails here, before any model loads
        if limit_items is not None:
            self.items = self.items[:limit_items]

    def batches(self) -> list[list[StudyItem]]:
        """The batches predict generates, in order (recorded batches of earlier runs kept)."""
        return group_into_batches(self.items, self.batch_size, self.recorded_batches)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(StudyBatches(self.batches()), batch_size=1, collate_fn=_unwrap, num_workers=0)

    def state_dict(self) -> dict[str, Any]:
        return {"study": self.study.name, "items": len(self.items)}
