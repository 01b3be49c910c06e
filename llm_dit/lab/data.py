"""The lab's data module: the lab's whole study for the run record, and only the asked items to generate."""

from __future__ import annotations

import lightning as L

from llm_dit.data import StudyDataModule
from llm_dit.study import Study, StudyItem


class LabDataModule(StudyDataModule):
    """A StudyDataModule whose items are given rather than the study's full grid.

    The lab's study is sparse (not every prompt was tried with every condition and seed), so its
    full grid is never what to generate; the writer still records the whole study (study.json) and
    resumes by settings, exactly as for a CLI study. One item per batch: the lab's images never
    depend on batch mates.
    """

    def __init__(self, study: Study, items: list[StudyItem]) -> None:
        L.LightningDataModule.__init__(self)
        self.study = study
        self.items = list(items)
        self.batch_size = 1
        self.limit_items = None
        self.overwrite_changed = False
        self.wait_for_lock = False
        self.recorded_batches: dict[str, tuple[str, ...]] = {}
