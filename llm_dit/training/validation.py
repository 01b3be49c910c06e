"""Validation for a style-adapter fit: a fixed-noise loss and sample grids in TensorBoard.

Grids are prompts (rows) x seeds (columns), drawn through `ZImageModule.generate`,
the same path `predict` uses, so what TensorBoard shows at step N is what the
exported adapter gives at scale 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from llm_dit.encoding.options import EncodingOptions
from llm_dit.sampling.settings import SamplerSettings
from llm_dit.study import Study


@dataclass
class ValidationSettings:
    """What to sample at each validation.

    Attributes:
        prompts: fixed prompts (none: only the validation loss is logged).
        seeds: one image per prompt and seed.
        sampler: SamplerSettings overrides; height/width default to the training resolution.
    """

    prompts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    sampler: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if any(not isinstance(p, str) or not p.strip() for p in self.prompts):
            raise ValueError(f"validation_prompts must be non-empty strings, got {self.prompts!r}")
        if not self.seeds:
            raise ValueError("validation_seeds is empty; give at least one seed, e.g. [0]")
        SamplerSettings().with_overrides(self.sampler)  # unknown keys or bad values fail at config time

    def sampler_settings(self, resolution: int | None) -> SamplerSettings:
        size = {"height": resolution, "width": resolution} if resolution else {}
        return SamplerSettings().with_overrides({**size, **self.sampler})


def image_grid(images: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """[N, 3, H, W] (row-major) -> [3, rows*H, columns*W]."""
    _, channels, height, width = images.shape
    grid = images.reshape(rows, columns, channels, height, width).permute(2, 0, 3, 1, 4)
    return grid.reshape(channels, rows * height, columns * width)


def sample_grid(module: Any, settings: ValidationSettings, options: EncodingOptions, resolution: int | None) -> torch.Tensor:
    """Generate every prompt x seed with the module's current weights; returns the grid image."""
    study = Study(name="validation", prompts=list(settings.prompts), seeds=list(settings.seeds),
                  encoding=options.to_dict(), sampler=settings.sampler_settings(resolution).to_dict())
    images = module.generate(study.items())[0]
    return image_grid(images, len(settings.prompts), len(settings.seeds))


def log_grid(module: Any, grid: torch.Tensor, tag: str = "validation/samples") -> None:
    """To TensorBoard (rank 0); other loggers are left alone."""
    logger = module.logger
    experiment = getattr(logger, "experiment", None) if logger is not None else None
    if experiment is not None and hasattr(experiment, "add_image") and module.trainer.is_global_zero:
        experiment.add_image(tag, grid.clamp(0, 1), global_step=module.global_step)
