"""World scene score: does the image show what a world prompt states? Exact, no weights.

For studies run on the synthetic world's prompts (``configs/prompts/world_*.txt``):
each image is scored against the facts of its prompt text
(``llm_dit.world.expected_facts``) by the classical detector of
``llm_dit.world``, GenEval-style. Per-item metrics (share of that kind's facts
that hold; missing where the prompt states none):

* ``world_all``: 1 when every fact holds, else 0 (the image-level score);
* ``world_facts``: share of all facts that hold;
* ``world_<kind>`` for presence, count, colour, size, position, style,
  relation, background (see ``llm_dit.world.score``);
* ``world_fill_<style>`` for each style in ``fills`` (off by default): the
  share of the detected objects drawn with that fill, whatever the prompt says
  (missing when no object is detected). The style adapter's score
  (configs/world_style_adapter_predict.yaml): a prompt that names no fill leaves
  ``world_style`` empty, this still reads what the image shows.

Prompts are read from ``original_prompt`` by default: a token manipulation
(shuffled nouns, removed adjectives) is scored on whether the image still
shows what was asked. ``prompt: encoded`` scores against the prompt as
encoded instead. Prompts outside the world's language state no facts and get
no values. Chance level: ``info`` (shown in set_metrics.json and the report)
gives each metric's chance level, the mean score of random world scenes
against the run's own prompts (``llm_dit.world.score.chance_level``).

A debug overlay (detections drawn on the image) goes to TensorBoard for the
first ``overlay_images`` items on rank 0.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from callbacks.metrics import ItemMetricCallback, gather_dict
from llm_dit.world.metric import to_uint8_images
from llm_dit.world.overlay import draw_detections
from llm_dit.world.scene import STYLES
from llm_dit.world.score import (
    FACT_KINDS,
    SceneScore,
    chance_level,
    fill_share,
    fill_share_chance,
    item_values,
    score_image,
)

METRIC_NAMES = ["world_all", "world_facts", *(f"world_{kind}" for kind in FACT_KINDS)]


class SceneScoreCallback(ItemMetricCallback):
    """Adds the ``world_*`` scene scores to every item (see module docstring).

    Args:
        prompt: "original" (the prompt the study asked for) or "encoded" (the prompt as encoded).
        max_size: larger images are downscaled to this many pixels (the world is drawn at 64-256 px).
        overlay_images: how many debug overlays to send to TensorBoard (0: none).
        fills: fill styles (of flat, striped, dotted) whose share of detected objects is
            reported as ``world_fill_<style>``, e.g. [striped] for a stripe adapter.
    """

    def __init__(
        self,
        prompt: Literal["original", "encoded"] = "original",
        max_size: int = 256,
        overlay_images: int = 8,
        fills: list[str] | None = None,
    ) -> None:
        super().__init__()
        if prompt not in ("original", "encoded"):
            raise ValueError(f"SceneScoreCallback(prompt={prompt!r}): use 'original' or 'encoded'")
        unknown = [style for style in fills or [] if style not in STYLES]
        if unknown:
            raise ValueError(f"SceneScoreCallback(fills={fills!r}): {unknown} not fill styles; use some of {list(STYLES)}")
        self.fills = list(dict.fromkeys(fills or []))
        self.prompt = prompt
        self.max_size = max_size
        self.overlay_images = overlay_images
        self._overlays_sent = 0
        self._last_scores: list[SceneScore] = []
        self._last_scored: tuple[list[Any], np.ndarray] = ([], np.zeros((0, 1, 1, 3), np.uint8))  # items, pixels
        self._chance: dict[str, dict[str, float | None]] = {}

    @property
    def metric_names(self) -> list[str]:
        return [*METRIC_NAMES, *(f"world_fill_{style}" for style in self.fills)]

    def _pixels(self, images: Tensor) -> np.ndarray:
        images = images.float()
        if max(images.shape[-2:]) > self.max_size:
            factor = self.max_size / max(images.shape[-2:])
            size = (round(images.shape[-2] * factor), round(images.shape[-1] * factor))
            images = torch.nn.functional.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        return to_uint8_images(images)

    def score(self, batch: Any, device: torch.device) -> dict[str, list[float | None]]:
        pixels = self._pixels(batch.images)
        out: dict[str, list[float | None]] = {name: [] for name in self.metric_names}
        self._last_scores = []
        # Only the batch's new items are scored (resumed ones keep their stored values): the
        # overlays pair these scores with these items, never with the whole batch.
        self._last_scored = (list(batch.items), pixels)
        for item, image in zip(batch.items, pixels):
            text = item.original_prompt if self.prompt == "original" else item.prompt
            result = score_image(image, text)
            self._last_scores.append(result)
            for name, value in item_values(result).items():
                out[f"world_{name}"].append(value)
            for style in self.fills:
                out[f"world_fill_{style}"].append(fill_share(result.detections.objects, style))
            self._chance[text] = self._chance_of(text)
        return out

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self._overlays_sent = 0
        self._chance = {}

    def summarize(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._chance = gather_dict(self._chance)  # collective: every rank, before the summary is written
        super().summarize(trainer, pl_module)

    def table_summary(self, rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | int]]]:
        """Means from the merged table, and chance levels over the table's prompts: a resumed or
        smoke re-run reports the chance of the whole study, not of the items it generated itself."""
        column = "original_prompt" if self.prompt == "original" else "prompt"
        texts = [row[column] for row in rows if isinstance(row.get(column), str)]
        if texts:  # rows from the writer's table carry the prompt; local-only rows do not
            self._chance = {text: self._chance_of(text) for text in dict.fromkeys(texts)}
        return super().table_summary(rows)

    def _chance_of(self, text: str) -> dict[str, float | None]:
        """Chance levels of one prompt's facts, as metric names (computed once per prompt)."""
        return self._chance.get(text) or {f"world_{k}": v for k, v in chance_level(text).items()}

    def chance(self, metric: str) -> float | None:
        """Chance level of ``metric`` over the run's prompts (mean over prompts that state such facts)."""
        values = [c[metric] for c in self._chance.values() if c.get(metric) is not None]
        return float(np.mean(values)) if values else None

    def score_batch(self, outputs: Any, pl_module: LightningModule) -> None:
        if not self.already_scored(outputs):
            self._last_scores = []  # a batch with nothing new to score shows no overlays
        super().score_batch(outputs, pl_module)

    def on_predict_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        if self._last_scores and trainer.is_global_zero and self._overlays_sent < self.overlay_images:
            self._send_overlays(trainer)

    def _send_overlays(self, trainer: Trainer) -> None:
        experiment = getattr(getattr(trainer, "logger", None), "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        items, pixels = self._last_scored
        for item, image, result in zip(items, pixels, self._last_scores):
            if self._overlays_sent >= self.overlay_images or result.detections is None:
                break
            verdict = "no facts" if result.all_hold is None else f"{sum(r.holds for r in result.results)}/{len(result.results)} facts"
            overlay = draw_detections(image, result.detections, header=verdict)
            tag = f"world_overlay/{item.condition}/p{item.prompt_index}_s{item.seed}"
            experiment.add_image(tag, overlay, global_step=0, dataformats="HWC")
            self._overlays_sent += 1

    def info(self, metric: str) -> dict[str, Any]:
        if metric.startswith("world_fill_"):
            style = metric.removeprefix("world_fill_")
            return {
                "definition": f"share of the detected objects drawn {style} (the detector's fill class), "
                "whatever the prompt states; missing when no object is detected",
                "chance": round(fill_share_chance(style), 4),
                "chance_definition": f"mean share of {style} objects in random world scenes",
            }
        chance = self.chance(metric)
        return {
            "definition": "share of the prompt's world facts that the detected scene satisfies "
            "(world_all: every fact holds); classical detector, no weights",
            "prompt": self.prompt,
            "chance": None if chance is None else round(chance, 4),
            "chance_definition": "mean score of a random world scene against the run's prompts "
            "(an image unrelated to its prompt scores this)",
        }
