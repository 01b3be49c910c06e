"""CLIP score with open_clip: text-image alignment per item.

Convention (stated in every report): ``clip_score = 100 * max(cos(image, text), 0)``,
the torchmetrics ``CLIPScore`` convention (range 0..100, ~30-35 for good
SD-class images with ViT-L/14). Hessel et al.'s CLIPScore is
``2.5 * max(cos, 0)``, i.e. our number / 40; ``convention="hessel"`` writes
that instead. Numbers from different CLIP models are not comparable.

Texts longer than the CLIP context (77 tokens) are truncated by the
tokenizer, which is why long prompts also get per-element scores.

Metrics added to each item (names end in ``_random_init`` when the model is
random, so such numbers can never pass for real ones):

* ``clip_score``: image vs ``original_prompt`` (what the user asked for; for
  long prompts this is the seed doc's *clip_score_full*, for token
  manipulations it measures whether the meaning survived);
* ``clip_score_encoded``: image vs the prompt as encoded
  (``metadata["compressed_prompt"]`` when the long-prompt code provides it:
  the seed doc's *clip_score_compressed*);
* ``clip_elements_mean`` and ``clip_element_<i>``: image vs each of
  ``metadata["elements"]`` (in prompt order: content preservation, Q5.2/Q5.4);
* ``clip_probe_<name>``: image vs fixed probe texts, e.g.
  ``{"oil_painting": "an oil painting with visible brushstrokes"}`` (style
  transfer, Q2.3 / Q7.2 / Q7.3).

Weights: ``pretrained`` is a local checkpoint file or, when online, an
open_clip tag ("openai", "laion2b_s34b_b79k"). Unset, the callback warns once
and scores nothing (it never invents a number). Set, they load before the run
(``check_before_run``), and weights that are missing or do not load stop it before
the model loads with a one-line ``MetricWeightsError`` (callbacks.weights).
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from callbacks.metrics import ItemMetricCallback
from callbacks.weights import weights_error

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_SCALE = {"torchmetrics": 100.0, "hessel": 2.5}


class ClipScoreCallback(ItemMetricCallback):
    """Per-item CLIP scores (see module docstring for the metric names and convention).

    Args:
        model_name: open_clip architecture, e.g. "ViT-B-32", "ViT-L-14".
        pretrained: local weights file, or an open_clip pretrained tag when online.
        probes: name -> fixed text; adds ``clip_probe_<name>`` per item.
        max_elements: per-element columns kept for long prompts (the mean uses all).
        convention: "torchmetrics" (100*max(cos,0)) or "hessel" (2.5*max(cos,0)).
        random_init_for_tests: build the model with random weights (tests only;
            metric names get a ``_random_init`` suffix).
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = None,
        probes: dict[str, str] | None = None,
        max_elements: int = 8,
        convention: Literal["torchmetrics", "hessel"] = "torchmetrics",
        random_init_for_tests: bool = False,
    ) -> None:
        super().__init__()
        if convention not in _SCALE:
            raise ValueError(f"convention must be one of {sorted(_SCALE)}, got {convention!r}")
        self.model_name = model_name
        self.pretrained = pretrained
        self.probes = dict(probes or {})
        self.max_elements = max_elements
        self.convention = convention
        self.random_init_for_tests = random_init_for_tests
        self._model: torch.nn.Module | None = None
        self._tokenizer: Any = None
        self._status: str | None = None  # None = not loaded yet

    # -- names ---------------------------------------------------------------
    @property
    def suffix(self) -> str:
        return "_random_init" if self.random_init_for_tests else ""

    @property
    def metric_names(self) -> list[str]:
        base = ["clip_score", "clip_score_encoded", "clip_elements_mean"]
        base += [f"clip_element_{i}" for i in range(self.max_elements)]
        base += [f"clip_probe_{name}" for name in self.probes]
        return [name + self.suffix for name in base]

    # -- loading -------------------------------------------------------------
    def check_before_run(self) -> None:
        """Load set weights now (the CLI calls this before the run, `setup` before the model
        loads): weights that were set but do not load raise MetricWeightsError."""
        self.enabled()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "predict":
            self.check_before_run()

    def enabled(self) -> bool:
        if self._status is None:
            self._status = self._load()
            if self._status != "ok":
                self.warn_once(self._status)
        return self._status == "ok"

    def _load(self) -> str:
        """"ok", or the reason to skip when no weights are set; raises MetricWeightsError when
        the weights that are set cannot be loaded."""
        if not self.random_init_for_tests and not self.pretrained:
            return (
                f"CLIP score skipped: set ClipScoreCallback(pretrained=...) to a local open_clip checkpoint for "
                f"{self.model_name!r} (e.g. open_clip_pytorch_model.bin), or to an open_clip tag such as 'openai' "
                "when online (pretrained is not set)."
            )
        import open_clip  # ~1 s with timm: only when CLIP will be scored

        fix = (f"set it to a local open_clip checkpoint of {self.model_name!r}, an open_clip tag when online, "
               "or null to skip CLIP score")
        looks_like_file = bool(self.pretrained) and (
            os.sep in self.pretrained or self.pretrained.endswith((".bin", ".pt", ".pth", ".safetensors"))
        )
        if looks_like_file and not os.path.isfile(self.pretrained):
            raise weights_error("CLIP score", "pretrained", self.pretrained, "file not found", fix)
        weights = None if self.random_init_for_tests else self.pretrained
        try:
            with torch.random.fork_rng(devices=[]):  # random init: identical on every rank and run
                torch.manual_seed(0)
                self._model = open_clip.create_model(self.model_name, pretrained=weights).eval().requires_grad_(False)
            self._tokenizer = open_clip.get_tokenizer(self.model_name)
        except Exception as error:
            if weights is None:
                raise  # the random test model must build: a failure here is a bug, not a config mistake
            raise weights_error("CLIP score", "pretrained", self.pretrained, error, fix) from error
        return "ok"

    def prepare(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.enabled():
            self._model.to(pl_module.device)

    def info(self, metric: str) -> dict[str, Any]:
        weights = "random-init (tests only)" if self.random_init_for_tests else self.pretrained
        formula = "100*max(cos,0)" if self.convention == "torchmetrics" else "2.5*max(cos,0)"
        return {"model": self.model_name, "weights": weights, "convention": f"{self.convention}: {formula}"}

    # -- scoring -------------------------------------------------------------
    @torch.no_grad()
    def score(self, batch: Any, device: torch.device) -> dict[str, list[float | None]]:
        image_features = self._encode_images(batch.images.to(device))
        texts: dict[str, None] = {}
        for item in batch.items:
            texts[item.original_prompt] = None
            texts[_encoded_text(item)] = None
            for element in _elements(item):
                texts[element] = None
        texts.update({text: None for text in self.probes.values()})
        text_list = list(texts)
        lookup = dict(zip(text_list, self._encode_texts(text_list, device)))
        scale = _SCALE[self.convention]

        def clip(i: int, text: str) -> float:
            return float(scale * torch.clamp(image_features[i] @ lookup[text], min=0))

        out: dict[str, list[float | None]] = {name: [] for name in self.metric_names}
        s = self.suffix
        for i, item in enumerate(batch.items):
            out["clip_score" + s].append(clip(i, item.original_prompt))
            out["clip_score_encoded" + s].append(clip(i, _encoded_text(item)))
            element_scores = [clip(i, e) for e in _elements(item)]
            out["clip_elements_mean" + s].append(sum(element_scores) / len(element_scores) if element_scores else None)
            for k in range(self.max_elements):
                out[f"clip_element_{k}{s}"].append(element_scores[k] if k < len(element_scores) else None)
            for name, text in self.probes.items():
                out[f"clip_probe_{name}{s}"].append(clip(i, text))
        return out

    def _encode_images(self, images: Tensor) -> Tensor:
        cfg = getattr(self._model.visual, "preprocess_cfg", {}) or {}
        size = cfg.get("size", getattr(self._model.visual, "image_size", 224))
        size = size[0] if isinstance(size, (tuple, list)) else int(size)
        mean = torch.tensor(cfg.get("mean", _OPENAI_MEAN), device=images.device)[:, None, None]
        std = torch.tensor(cfg.get("std", _OPENAI_STD), device=images.device)[:, None, None]
        pixels = (center_crop_resize(images.float(), size) - mean) / std
        features = self._model.encode_image(pixels).float()
        return torch.nn.functional.normalize(features, dim=-1)

    def _encode_texts(self, texts: list[str], device: torch.device, chunk: int = 64) -> Tensor:
        parts = []
        for start in range(0, len(texts), chunk):
            tokens = self._tokenizer(texts[start : start + chunk]).to(device)
            parts.append(self._model.encode_text(tokens).float())
        return torch.nn.functional.normalize(torch.cat(parts), dim=-1)


def center_crop_resize(images: Tensor, size: int) -> Tensor:
    """CLIP preprocessing on tensors: shortest side -> size (bicubic, antialiased), center crop."""
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    images = torch.nn.functional.interpolate(
        images, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
    )
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return images[..., top : top + size, left : left + size].clamp(0, 1)


def _encoded_text(item: Any) -> str:
    return str((item.metadata or {}).get("compressed_prompt") or item.prompt)


def _elements(item: Any) -> list[str]:
    return [str(e) for e in (item.metadata or {}).get("elements") or []]
