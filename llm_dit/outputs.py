"""What `ZImageModule.predict_step` hands to the writer and metric callbacks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from llm_dit.study import StudyItem


@dataclass
class GeneratedBatch:
    """A batch of finished items.

    Attributes:
        items: the study items, in batch order.
        images: [B, 3, H, W] float32 in [0, 1] on the CPU.
        seconds_per_image: wall time of this batch's generation / generated items.
        peak_memory_bytes: peak accelerator memory during the batch (None on CPU).
        resumed: True where the image was read back from disk (finished earlier).
        embeddings: caption features each item's DiT received, [L_i, D] float32 CPU
            (None for resumed items).
        encodings: per-item encoding metadata (token ids, tokens, segments) or None.
        metrics: per-item metric values, filled by metric callbacks before the writer runs.
        extras: other per-item values (e.g. refiner drift), stored in the results table.
    """

    items: list[StudyItem]
    images: torch.Tensor
    seconds_per_image: float
    peak_memory_bytes: int | None
    resumed: list[bool]
    embeddings: list[torch.Tensor | None] = field(default_factory=list)
    encodings: list[Any] = field(default_factory=list)
    metrics: dict[str, list[float | None]] = field(default_factory=dict)
    extras: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)


def load_png(path: Path) -> torch.Tensor:
    """Read a PNG written by the writer back as [3,H,W] float32 in [0,1]."""
    with Image.open(path) as image:
        array = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
        return array.view(image.height, image.width, 3).permute(2, 0, 1).float() / 255.0
