"""``WorldSceneScore``: the world scorer as a torchmetrics metric (sum states, synced across ranks).

For training loops and notebooks: ``update(images, prompts)`` scores each
image against its prompt text; ``compute()`` gives, per fact kind, the share
of facts that hold, plus ``all_hold`` (share of images whose every fact holds)
and ``facts`` (share over all facts). Kinds no prompt asked about are NaN.
Study runs use ``callbacks.scene_score.SceneScoreCallback``, which adds the
per-item values to the results table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from llm_dit.world.score import FACT_KINDS, SceneScore, score_image


def to_uint8_images(images: Tensor | np.ndarray) -> np.ndarray:
    """[B, 3, H, W] float in [0, 1] (a torch batch) or [B, H, W, 3] uint8 -> [B, H, W, 3] uint8."""
    if isinstance(images, Tensor):
        if images.dtype == torch.uint8:
            return images.permute(0, 2, 3, 1).cpu().numpy()
        return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected [B, H, W, 3] uint8 or a [B, 3, H, W] tensor, got shape {images.shape}")
    return images.astype(np.uint8)


class WorldSceneScore(Metric):
    """Share of a prompt's facts that an image satisfies, per fact kind (exact, no weights)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        for kind in (*FACT_KINDS, "facts"):
            self.add_state(f"held_{kind}", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"total_{kind}", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images_all_hold", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images_scored", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, images: Tensor | np.ndarray, prompts: Sequence[str]) -> None:  # type: ignore[override]
        pixels = to_uint8_images(images)
        if len(pixels) != len(prompts):
            raise ValueError(f"{len(pixels)} images but {len(prompts)} prompts: pass one prompt per image")
        for image, prompt in zip(pixels, prompts):
            self.add_score(score_image(image, prompt))

    def add_score(self, score: SceneScore) -> None:
        for result in score.results:
            for kind in (result.kind, "facts"):
                getattr(self, f"held_{kind}").add_(float(result.holds))
                getattr(self, f"total_{kind}").add_(1.0)
        if score.all_hold is not None:
            self.images_all_hold.add_(float(score.all_hold))
            self.images_scored.add_(1.0)

    def compute(self) -> dict[str, Tensor]:
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        out = {}
        for kind in (*FACT_KINDS, "facts"):
            total = getattr(self, f"total_{kind}")
            out[kind] = getattr(self, f"held_{kind}") / total if total > 0 else nan
        out["all_hold"] = self.images_all_hold / self.images_scored if self.images_scored > 0 else nan
        return out
