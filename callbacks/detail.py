"""Detail (sharpness) score: variance of the Laplacian of the luminance.

Needs no weights, so it always runs. It answers "sharper or softer?" questions
(Q1.1, Q2.2, Q5.3) as a proxy: noise and high-frequency artefacts also raise
it, so read it next to CLIP score and a human A/B study, never alone.

Convention: luminance Y = 0.299 R + 0.587 G + 0.114 B on the 0..255 scale,
3x3 Laplacian [[0,1,0],[1,-4,1],[0,1,0]] without padding, population
variance. This equals OpenCV's ``cv2.Laplacian(gray, cv2.CV_64F).var()`` on
the interior pixels, the usual blur-detection number. It depends on the
resolution: compare conditions at the same size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from callbacks.metrics import ItemMetricCallback

_LUMA = (0.299, 0.587, 0.114)
_LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def laplacian_variance(images: Tensor) -> Tensor:
    """Detail score per image of a [B, 3, H, W] batch in [0, 1] -> [B] (float64)."""
    images = images.to(torch.float64)
    luma = torch.tensordot(torch.tensor(_LUMA, dtype=images.dtype, device=images.device), images, dims=([0], [1]))
    kernel = torch.tensor(_LAPLACIAN, dtype=images.dtype, device=images.device)[None, None]
    response = torch.nn.functional.conv2d(luma[:, None] * 255.0, kernel)
    return response.flatten(1).var(dim=1, unbiased=False)


class DetailScoreCallback(ItemMetricCallback):
    """Adds ``metric.detail_score`` (Laplacian variance of luminance) to every item."""

    @property
    def metric_names(self) -> list[str]:
        return ["detail_score"]

    def score(self, batch: Any, device: torch.device) -> dict[str, list[float | None]]:
        return {"detail_score": laplacian_variance(batch.images.to(device)).tolist()}

    def info(self, metric: str) -> dict[str, Any]:
        return {"definition": "variance of the 3x3 Laplacian of 0..255 luminance (no weights)"}
