"""LPIPS diversity: how different the images of one (condition, prompt) are across seeds.

For every (condition, prompt) the mean LPIPS distance over all pairs of seeds
is computed; the condition's value is the mean over its prompts (higher = more
diverse). Seeds of one prompt can land on different ranks, so small uint8
copies of the images (``resolution`` squared, aspect not kept: pairs share a
condition and so a size) are gathered with ``KeyedImages`` and the pairs are
scored after the sync. Memory: 3 x 256 x 256 bytes per image (~0.2 MB).

Network: torchmetrics' LPIPS (linear heads ship with torchmetrics) on a
torchvision backbone whose ImageNet weights must be local: ``backbone_weights``
(a torchvision state-dict file, e.g. alexnet-owt-7be5be79.pth), or the file
already in torch's hub cache. Unset and not cached, LPIPS is skipped with one
warning; a ``backbone_weights`` file that is set but missing or does not load stops
the run before the model loads (``check_before_run``) with a one-line
``MetricWeightsError`` (callbacks.weights). LPIPS expects inputs in [-1, 1]: images in
[0, 1] are mapped with ``2x - 1``.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from callbacks.metrics import KeyedImages, RunSummaryCallback, compute_quietly, gather_dict, item_keys, run_dir_of, update_set_metrics
from callbacks.weights import weights_error

_TORCHVISION = {
    "alex": ("alexnet", "AlexNet_Weights"),
    "vgg": ("vgg16", "VGG16_Weights"),
    "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights"),
}


def seed_pairs(keys: Tensor) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Row-index pairs of different seeds within each (condition, prompt) of [N, 3] keys."""
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for row, (condition, prompt, seed) in enumerate(keys.tolist()):
        groups.setdefault((int(condition), int(prompt)), []).append((int(seed), row))
    pairs: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for group, members in groups.items():
        unique = {seed: row for seed, row in sorted(members)}  # a duplicate seed counts once
        rows = [unique[s] for s in sorted(unique)]
        if len(rows) >= 2:
            pairs[group] = list(itertools.combinations(rows, 2))
    return pairs


def build_lpips(net: str, backbone_weights: str | None, random_init: bool) -> torch.nn.Module:
    """torchmetrics' LPIPS with the backbone loaded from a local torchvision state dict."""
    import torchvision
    from torchmetrics.functional.image.lpips import _LPIPS

    with torch.random.fork_rng(devices=[]):  # a random backbone must be the same on every rank and run
        torch.manual_seed(0)
        model = _LPIPS(pretrained=True, net=net, pnet_rand=True).eval().requires_grad_(False)
    if random_init:
        return model
    arch, _ = _TORCHVISION[net]
    backbone = getattr(torchvision.models, arch)(weights=None)
    backbone.load_state_dict(torch.load(backbone_weights, map_location="cpu", weights_only=True))
    features = backbone.features
    for slice_module in model.net.children():  # slices hold features[i] under the name "i"
        for name, layer in slice_module.named_children():
            layer.load_state_dict(features[int(name)].state_dict())
    return model


def cached_backbone(net: str) -> str | None:
    """The torchvision backbone file in torch's hub cache, if a previous download left one."""
    import torchvision

    _, weights_enum = _TORCHVISION[net]
    url = getattr(torchvision.models, weights_enum).DEFAULT.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    return str(path) if path.is_file() else None


class LpipsDiversityCallback(RunSummaryCallback):
    """Mean pairwise LPIPS across seeds per (condition, prompt); set_metrics.json "lpips_diversity".

    Args:
        net: LPIPS backbone: "alex" (default, the usual choice), "vgg" or "squeeze".
        backbone_weights: torchvision state-dict file of that backbone; default: torch hub cache.
        resolution: images are compared at resolution x resolution.
        pair_batch_size: pairs per LPIPS forward.
        random_init_for_tests: random backbone (tests only; metric named ``lpips_diversity_random_init``).
    """

    def __init__(
        self,
        net: Literal["alex", "vgg", "squeeze"] = "alex",
        backbone_weights: str | None = None,
        resolution: int = 256,
        pair_batch_size: int = 32,
        random_init_for_tests: bool = False,
    ) -> None:
        super().__init__()
        if net not in _TORCHVISION:
            raise ValueError(f"net must be one of {sorted(_TORCHVISION)}, got {net!r}")
        self.net, self.backbone_weights, self.resolution = net, backbone_weights, resolution
        self.pair_batch_size, self.random_init_for_tests = pair_batch_size, random_init_for_tests
        self.name = "lpips_diversity_random_init" if random_init_for_tests else "lpips_diversity"
        self._model: torch.nn.Module | None = None
        self._images: KeyedImages | None = None
        self._condition_names: dict[int, str] = {}
        self._summary: dict[str, dict[str, Any]] | None = None
        self._skip_reason: str | None = None

    def check_before_run(self) -> None:
        """Load set weights now (the CLI calls this before the run, `setup` before the model
        loads): backbone_weights that were set but do not load raise MetricWeightsError."""
        if self._model is None:
            self._skip_reason = self._load()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "predict":
            self.check_before_run()

    def _load(self) -> str | None:
        """The reason to skip (no usable weights set or cached), or None once the model is built;
        raises MetricWeightsError when the backbone_weights that were set do not load."""
        if self.random_init_for_tests:
            self._model = build_lpips(self.net, None, True)
            return None
        weights = self.backbone_weights or cached_backbone(self.net)
        arch = _TORCHVISION[self.net][0]
        if not weights:
            return (
                f"LPIPS diversity skipped: set LpipsDiversityCallback(backbone_weights=...) to the torchvision "
                f"{arch} ImageNet state-dict file (backbone_weights is not set; none in torch's hub cache either)."
            )
        fix = f"set backbone_weights to the torchvision {arch} ImageNet state-dict file, or null to skip LPIPS"
        if not Path(weights).is_file():
            raise weights_error("LPIPS diversity", "backbone_weights", weights, "file not found", fix)
        try:
            self._model = build_lpips(self.net, weights, False)
        except Exception as error:
            if not self.backbone_weights:  # not set: a stale file in the hub cache only skips the metric
                return f"LPIPS diversity skipped: the cached backbone {weights!r} does not load ({type(error).__name__})."
            raise weights_error("LPIPS diversity", "backbone_weights", weights, error, fix) from error
        return None

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self._summary, self._condition_names, self._images = None, {}, None
        if self._model is None:
            self.check_before_run()
        if self._model is None:
            rank_zero_warn(self._skip_reason)
            return
        self._model.to(pl_module.device)
        self._images = KeyedImages(self.resolution).to(pl_module.device)

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._images is None or outputs is None or not outputs.items:
            return
        keys = torch.stack(item_keys(outputs.items, pl_module.device), dim=1)
        self._images.update(keys, outputs.images)
        for item in outputs.items:
            self._condition_names[item.condition_index] = item.condition

    @torch.no_grad()
    def condition_summary(self) -> dict[str, dict[str, Any]]:
        """``{name: {condition: {"value", "n" (prompts), "per_prompt"}}}`` (collective; cached)."""
        if self._summary is not None:
            return self._summary
        self._summary = {}
        if self._images is None:
            return self._summary
        names = gather_dict(self._condition_names)
        keys, pixels = compute_quietly(self._images)
        per_group: dict[int, dict[int, float]] = {}
        for (condition, prompt), pairs in seed_pairs(keys).items():
            distances = self._distances(pixels, pairs)
            per_group.setdefault(condition, {})[prompt] = float(distances.mean())
        self._summary[self.name] = {
            names.get(c, str(c)): {
                "value": sum(prompts.values()) / len(prompts),
                "n": len(prompts),
                "per_prompt": {str(p): v for p, v in sorted(prompts.items())},
            }
            for c, prompts in sorted(per_group.items())
            if all(math.isfinite(v) for v in prompts.values())
        }
        return self._summary

    def _distances(self, pixels: Tensor, pairs: list[tuple[int, int]]) -> Tensor:
        out = []
        for start in range(0, len(pairs), self.pair_batch_size):
            chunk = torch.tensor(pairs[start : start + self.pair_batch_size], device=pixels.device)
            a = pixels[chunk[:, 0]].float() / 127.5 - 1.0  # [0, 255] -> [-1, 1]
            b = pixels[chunk[:, 1]].float() / 127.5 - 1.0
            out.append(self._model(a, b).reshape(-1))
        return torch.cat(out)

    def summarize(self, trainer: Trainer, pl_module: LightningModule) -> None:
        summary = self.condition_summary().get(self.name)
        run_dir = run_dir_of(trainer)
        if summary is None or not trainer.is_global_zero or run_dir is None:
            return
        info = {
            "net": self.net,
            "weights": "random-init backbone (tests only)" if self.random_init_for_tests else self.backbone_weights,
            "resolution": self.resolution,
            "definition": "mean LPIPS over seed pairs per (condition, prompt), then mean over prompts",
        }
        update_set_metrics(run_dir, {self.name: {"kind": "per_prompt_mean", "conditions": summary, "info": info}})
