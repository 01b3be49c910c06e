"""FID per condition against a folder of reference images.

Why not one torchmetrics ``FrechetInceptionDistance`` per condition: each holds
two 2048x2048 float64 covariance sums (64 MB), 3.6 GB for the 56 conditions
of the shift x steps grid. ``ConditionFID`` keeps the reference statistics
once (sum states) and the generated images' features per condition (list
states, ~8 kB per image), and computes the same Frechet distance as
torchmetrics. The feature extractor is torchmetrics' ``NoTrainInceptionV3``
(torch-fidelity's FID Inception, the standard network), loaded from a local
weights file ``weights`` (pt_inception-2015-12-05-6726825d.pth).

Both sides are resized the same way to 299x299 before the network: numbers
are comparable within this toolkit, not to published FIDs made with other
resizing. FID is biased and noisy below a few thousand images per condition
(the default warning threshold is 2048): with 50 images per condition, read it
as a rough ranking at best.

Unset ``reference_dir`` or ``weights`` skip FID with one warning. Set ones that
are unusable (no such folder, a file that does not load) stop the run before the
model loads (``check_before_run``) with a one-line ``MetricWeightsError``.

Reference images are split over ranks (file i goes to rank i % world size)
and their statistics summed, so each rank reads only its share.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch import Tensor

from callbacks.metrics import (
    RunSummaryCallback,
    TypedListMetric,
    compute_quietly,
    gather_dict,
    item_keys,
    resize_square,
    run_dir_of,
    to_uint8,
    update_set_metrics,
)
from callbacks.weights import weights_error

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """||mu1-mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), as torchmetrics computes it (eigenvalues)."""
    a = (mu1 - mu2).square().sum()
    b = sigma1.trace() + sigma2.trace()
    c = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    return float(a + b - 2 * c)


def _mean_cov(features: Tensor) -> tuple[Tensor, Tensor]:
    mean = features.mean(0)
    centered = features - mean
    return mean, centered.T @ centered / (len(features) - 1)


class ConditionFID(TypedListMetric):
    """Reference statistics (summed) + generated features per condition (gathered)."""

    def __init__(self, num_features: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        f = num_features
        self.add_state("real_sum", torch.zeros(f, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("real_cov_sum", torch.zeros(f, f, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("real_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_list_state("condition", torch.float64)
        self.add_list_state("features", torch.float64, (f,))

    def update(self, features: Tensor, condition: Tensor | None = None) -> None:
        """Reference features when ``condition`` is None, else generated ones of those conditions."""
        features = features.to(torch.float64)
        if condition is None:
            self.real_sum += features.sum(0)
            self.real_cov_sum += features.T @ features
            self.real_n += len(features)
        else:
            self.condition.append(condition.to(torch.float64).reshape(-1))
            self.features.append(features)

    def compute(self) -> dict[int, tuple[float | None, int]]:
        """Per condition index: (FID or None when < 2 images on either side, image count)."""
        cond, feats = self.column("condition").cpu(), self.column("features").cpu()  # eigvals on the CPU
        out: dict[int, tuple[float | None, int]] = {}
        n_real = float(self.real_n)
        if n_real >= 2:
            mu_r = self.real_sum.cpu() / n_real
            cov_r = (self.real_cov_sum.cpu() - n_real * torch.outer(mu_r, mu_r)) / (n_real - 1)
        for index in sorted({int(c) for c in cond.tolist()}):
            mine = feats[cond == index]
            if n_real < 2 or len(mine) < 2:
                out[index] = (None, len(mine))
                continue
            mu_f, cov_f = _mean_cov(mine)
            out[index] = (frechet_distance(mu_r, cov_r, mu_f, cov_f), len(mine))
        return out


class RandomFeatureNet(torch.nn.Module):
    """A small random conv net standing in for Inception in tests (numbers are meaningless)."""

    def __init__(self, num_features: int = 64) -> None:
        super().__init__()
        self.num_features = num_features
        with torch.random.fork_rng(devices=[]):  # deterministic without touching the global RNG
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 5, stride=4),
                torch.nn.ReLU(),
                torch.nn.Conv2d(16, num_features, 3, stride=2),
                torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1),
                torch.nn.Flatten(),
            ).requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images.float() / 255.0)


class FidCallback(RunSummaryCallback):
    """FID of each condition's images vs ``reference_dir``; written to set_metrics.json as "fid".

    Args:
        reference_dir: folder of real images (searched recursively).
        weights: FID Inception weights file (torch-fidelity format). Needs ``torch-fidelity``.
        feature: Inception feature layer (64, 192, 768 or 2048).
        min_images: warn for conditions with fewer generated images than this.
        max_reference_images: use at most this many reference images (sorted order).
        batch_size: reference images per forward.
        random_init_for_tests: use ``RandomFeatureNet`` (tests only; metric named ``fid_random_init``).
    """

    def __init__(
        self,
        reference_dir: str | None = None,
        weights: str | None = None,
        feature: int = 2048,
        min_images: int = 2048,
        max_reference_images: int | None = None,
        batch_size: int = 32,
        random_init_for_tests: bool = False,
    ) -> None:
        super().__init__()
        self.reference_dir = reference_dir
        self.weights = weights
        self.feature = feature
        self.min_images = min_images
        self.max_reference_images = max_reference_images
        self.batch_size = batch_size
        self.random_init_for_tests = random_init_for_tests
        self.name = "fid_random_init" if random_init_for_tests else "fid"
        self._extractor: torch.nn.Module | None = None
        self._metric: ConditionFID | None = None
        self._condition_names: dict[int, str] = {}
        self._summary: dict[str, dict[str, Any]] | None = None
        self._skip_reason: str | None = None
        self._n_reference = 0

    def check_before_run(self) -> None:
        """Load set weights now (the CLI calls this before the run, `setup` before the model
        loads): a reference_dir or weights that were set but are unusable raise MetricWeightsError."""
        self._skip_reason = self._build()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "predict":
            self.check_before_run()

    def _build(self) -> str | None:
        """The reason to skip (reference images or weights not set), or None once the extractor
        is ready; raises MetricWeightsError when the weights that are set cannot be loaded."""
        if self._extractor is not None:
            return None
        hint = "FID skipped: "
        if not self.reference_dir:
            return hint + "set FidCallback(reference_dir=...) to a folder of real images (reference_dir is not set)."
        if not Path(self.reference_dir).is_dir():
            raise weights_error("FID", "reference_dir", self.reference_dir, "not a folder",
                                "set it to a folder of real images, or null to skip FID")
        if self.random_init_for_tests:
            self._extractor = RandomFeatureNet()
            return None
        if not self.weights:
            return hint + (
                "set FidCallback(weights=...) to the FID Inception weights file "
                "pt_inception-2015-12-05-6726825d.pth (weights is not set)."
            )
        fix = "set it to the FID Inception file pt_inception-2015-12-05-6726825d.pth, or null to skip FID"
        if not Path(self.weights).is_file():
            raise weights_error("FID", "weights", self.weights, "file not found", fix)
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self._extractor = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=[str(self.feature)],
                feature_extractor_weights_path=self.weights,
            )
        except ImportError as error:
            raise weights_error("FID", "weights", self.weights, error, "`pip install torch-fidelity`") from error
        except Exception as error:
            raise weights_error("FID", "weights", self.weights, error, fix) from error
        return None

    def _features(self, images: Tensor) -> Tensor:
        """[N, 3, H, W] in [0, 1] -> features; both sides resized identically to 299x299 uint8."""
        return self._extractor(to_uint8(resize_square(images, 299))).reshape(len(images), -1)

    @torch.no_grad()
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self._summary, self._condition_names, self._metric = None, {}, None
        self._skip_reason = self._build()  # already built by setup: returns the same answer
        if self._skip_reason:
            rank_zero_warn(self._skip_reason)
            return
        device = pl_module.device
        self._extractor.to(device)
        num_features = self._features(torch.zeros(1, 3, 299, 299, device=device)).shape[-1]
        self._metric = ConditionFID(num_features).to(device)
        files = sorted(p for p in Path(self.reference_dir).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        files = files[: self.max_reference_images] if self.max_reference_images else files
        self._n_reference = len(files)
        mine = files[trainer.global_rank :: trainer.world_size]
        for start in range(0, len(mine), self.batch_size):
            chunk = mine[start : start + self.batch_size]
            images = torch.cat([resize_square(load_image(p)[None], 299) for p in chunk]).to(device)
            self._metric.update(self._features(images))

    @torch.no_grad()
    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._metric is None or outputs is None or not outputs.items:
            return
        condition, _, _ = item_keys(outputs.items, pl_module.device)
        self._metric.update(self._features(outputs.images.to(pl_module.device)), condition)
        for item in outputs.items:
            self._condition_names[item.condition_index] = item.condition

    def condition_summary(self) -> dict[str, dict[str, Any]]:
        """``{"fid": {condition: {"value", "n"}}}`` synced over ranks (collective; cached)."""
        if self._summary is None:
            self._summary = {}
            if self._metric is not None:
                names = gather_dict(self._condition_names)
                per_index = compute_quietly(self._metric)
                self._summary[self.name] = {
                    names.get(i, str(i)): {"value": finite_or_none(v), "n": n} for i, (v, n) in per_index.items()
                }
        return self._summary

    def summarize(self, trainer: Trainer, pl_module: LightningModule) -> None:
        summary = self.condition_summary().get(self.name)
        if summary is None:
            return
        few = sorted(name for name, entry in summary.items() if entry["n"] < self.min_images)
        warning = None
        if few:
            warning = (
                f"FID from fewer than {self.min_images} images per condition is biased and noisy "
                f"(conditions: {', '.join(few)}); compare conditions only as a rough ranking."
            )
            rank_zero_warn(warning)
        run_dir = run_dir_of(trainer)
        if trainer.is_global_zero and run_dir is not None:
            info = {
                "weights": "random-init (tests only)" if self.random_init_for_tests else self.weights,
                "reference_dir": self.reference_dir,
                "reference_images": self._n_reference,
                "feature": "random 64-d (tests only)" if self.random_init_for_tests else self.feature,
                "resize": "both sides bilinear (antialiased) to 299x299",
                "warning": warning,
            }
            update_set_metrics(run_dir, {self.name: {"kind": "set", "conditions": summary, "info": info}})


def load_image(path: Path) -> Tensor:
    """An image file as a [3, H, W] float tensor in [0, 1] (RGB)."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
