"""Shared steps: conditions whose sampling schedules start alike compute those steps once.

A sweep over shift (or over step counts) changes the schedule, but every flow-match
schedule starts at sigma = 1. For the same prompt encoding, seed, size, guidance,
surgery and weights, the first DiT call of each of those conditions sees the very same
latents, timestep and captions, so it returns the very same prediction. More generally
the prediction at step i is a function of the sigma prefix sigma_0..sigma_i (the latents
at step i are the noise moved by the earlier predictions over those sigmas) and of
the row's inputs, nothing else.

`StepCache` keeps the guided prediction of a batch's rows at the steps whose sigma
prefix is shared by at least two of the study's schedules (known before the run:
`StepCache.for_schedules`), keyed by (row, prefix). A later batch whose rows all hit
skips the DiT for that step. Because a hit returns what the same batch of rows
computed, images are bit-identical to running every step (tested); a batch with only
some rows stored simply computes the step.

Stored predictions live on the CPU (one [16, h/8, w/8] float32 row: 1 MiB at 1024^2),
least recently used first out past `max_bytes`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence

import torch

Prefix = tuple[float, ...]


def shared_prefixes(schedules: Iterable[Sequence[float]]) -> set[Prefix]:
    """Sigma prefixes (sigma_0..sigma_i, for each step i) that two or more distinct schedules begin with."""
    distinct = {tuple(float(s) for s in schedule) for schedule in schedules}
    seen: dict[Prefix, int] = {}
    for schedule in distinct:
        # The last sigma is the terminal 0: no DiT call is made there.
        for end in range(1, len(schedule)):
            prefix = schedule[:end]
            seen[prefix] = seen.get(prefix, 0) + 1
    return {prefix for prefix, count in seen.items() if count >= 2}


class StepCache:
    """Guided predictions of rows at shared steps (see the module docstring).

    Attributes:
        prefixes: the sigma prefixes worth storing.
        hits, misses: batches served / computed at a wanted step (for logs and tests).
    """

    def __init__(self, prefixes: set[Prefix], max_bytes: int = 4 << 30) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.prefixes = set(prefixes)
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._rows: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._bytes = 0

    @classmethod
    def for_schedules(cls, schedules: Iterable[Sequence[float]], max_bytes: int = 4 << 30) -> StepCache:
        return cls(shared_prefixes(schedules), max_bytes)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def wants(self, prefix: Prefix) -> bool:
        return prefix in self.prefixes

    def lookup(self, keys: Sequence[Hashable], device: torch.device | str) -> torch.Tensor | None:
        """The stored prediction [B, ...] when every key is stored, else None."""
        if not keys or any(key not in self._rows for key in keys):
            self.misses += 1
            return None
        self.hits += 1
        for key in keys:
            self._rows.move_to_end(key)
        return torch.stack([self._rows[key] for key in keys]).to(device, non_blocking=False)

    def store(self, keys: Sequence[Hashable], prediction: torch.Tensor) -> None:
        if len(keys) != prediction.shape[0]:
            raise ValueError(f"{len(keys)} keys for a batch of {prediction.shape[0]}")
        rows = prediction.detach().to("cpu").unbind(0)
        for key, row in zip(keys, rows):
            if key in self._rows:
                continue
            row = row.clone()  # own storage, not a view of the batch
            self._rows[key] = row
            self._bytes += row.numel() * row.element_size()
        while self._bytes > self.max_bytes and self._rows:
            _, evicted = self._rows.popitem(last=False)
            self._bytes -= evicted.numel() * evicted.element_size()

    def clear(self) -> None:
        self._rows.clear()
        self._bytes = 0
