"""The world's evaluator: detection accuracy on rendered scenes, the fact scorer, the metric and the callback.

Oracles: rendered scenes are their own ground truth (detections are compared
attribute by attribute with the scene that was drawn); the fact scorer is
checked on hand-built cases; the callback's per-item values are compared with
those ground truths. The full 10,000-scene validation and the speed
measurement are in benchmarks/world_eval.py (numbers in benchmarks/NOTES.md).
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks.scene_score import METRIC_NAMES, SceneScoreCallback
from llm_dit.world.captions import FORMS, caption
from llm_dit.world.detection import detect
from llm_dit.world.facts import Facts, ObjectFact, RelationFact
from llm_dit.world.metric import WorldSceneScore
from llm_dit.world.overlay import draw_detections
from llm_dit.world.prompt_sets import FOLDER, expected_files
from llm_dit.world.render import render, render_batch
from llm_dit.world.scene import Scene, WorldObject, sample_scene
from llm_dit.world.score import (
    FACT_KINDS,
    _random_scenes,
    chance_level,
    check_facts,
    scene_facts,
    score_image,
    score_scene,
    summary,
)

N_SCENES = 150  # per size; benchmarks/world_eval.py runs 10,000


@pytest.mark.parametrize("size", [64, 128])
def test_detector_recovers_every_attribute_of_rendered_scenes(size):
    scenes = [sample_scene(90_000 + i) for i in range(N_SCENES)]
    images = render_batch(scenes, size, seed=size)
    errors, total = 0, 0
    for scene, image in zip(scenes, images):
        found = detect(image)
        assert found.background == scene.background
        assert len(found.objects) == len(scene.objects)
        by_cell = {(o.row, o.col): o for o in found.objects}
        for obj in scene.objects:
            det = by_cell.get((obj.row, obj.col))
            for name in ("shape", "colour", "size", "style"):
                total += 1
                errors += det is None or getattr(det, name) != getattr(obj, name)
    assert errors / total <= 0.005


def test_every_fact_of_a_scene_holds_on_its_image_and_foreign_facts_are_judged_like_the_scene():
    scenes = [sample_scene(70_000 + i, n_objects=(i % 4) + 1, repeat=1 if i % 4 and i % 3 == 1 else 0) for i in range(N_SCENES)]
    images = render_batch(scenes, 64, seed=1)
    own = [score_image(image, scene_facts(scene)) for image, scene in zip(images, scenes)]
    assert all(s.all_hold for s in own)
    assert {r.kind for s in own for r in s.results} == set(FACT_KINDS)
    # Captions of other scenes: the image must be judged exactly as its ground-truth scene is.
    rng = np.random.default_rng(0)
    agree, n = 0, 0
    for i, (image, scene) in enumerate(zip(images, scenes)):
        prompt = caption(scenes[(i + 7) % len(scenes)], rng, FORMS[i % len(FORMS)])
        verdicts = [r.holds for r in score_image(image, prompt).results]
        truth = [r.holds for r in score_scene(scene, prompt).results]
        agree += sum(a == b for a, b in zip(verdicts, truth))
        n += len(truth)
    assert agree == n


def _obj(shape, colour, size="small", row=0, col=0, style="flat"):
    return WorldObject(shape, colour, size, row, col, style)


def test_fact_rules_on_hand_built_cases():
    objects = [_obj("square", "red", row=0, col=0), _obj("circle", "blue", "large", 0, 2, "striped"), _obj("circle", "blue", row=2, col=2)]
    results = lambda facts: {(r.kind, r.description): r.holds for r in check_facts(facts, objects, "gray")}  # noqa: E731
    swapped = results(Facts((ObjectFact("square", "blue"), ObjectFact("circle", "red")), (), "white"))
    assert [v for (k, _), v in swapped.items() if k == "presence"] == [True, True]
    assert [v for (k, _), v in swapped.items() if k == "colour"] == [False, False]  # colour binding fails
    assert [v for (k, _), v in swapped.items() if k == "background"] == [False]
    counts = [r.holds for r in check_facts(Facts((ObjectFact("circle", "blue", count=2), ObjectFact("circle", count=3))), objects, None)]
    assert counts == [True, True, True, True, False]  # presence, count 2, colour | presence, count 3
    rel = lambda a, how, b: check_facts(Facts((a, b), (RelationFact(0, how, 1),)), objects, None)[-1].holds  # noqa: E731
    assert rel(ObjectFact("square"), "left_of", ObjectFact("circle"))
    assert not rel(ObjectFact("square"), "right_of", ObjectFact("circle"))
    assert rel(ObjectFact("circle", size="large"), "above", ObjectFact("circle", size="small"))
    assert not rel(ObjectFact("circle"), "left_of", ObjectFact("circle"))  # same column: never left of itself
    assert rel(ObjectFact("circle"), "above", ObjectFact("circle"))  # two different blue circles
    placed = check_facts(Facts((ObjectFact("circle", "blue", style="striped", row=0, col=2),)), objects, None)
    assert [(r.kind, r.holds) for r in placed] == [("presence", True), ("colour", True), ("style", True), ("position", True)]


def test_noise_and_blank_images_hold_no_object():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert detect(noise).objects == ()
    blank = np.full((64, 64, 3), 128, dtype=np.uint8)
    assert detect(blank).objects == () and detect(blank).background == "gray"


def test_torchmetrics_metric_matches_the_scorer_and_merges_like_ranks():
    scenes = [sample_scene(60_000 + i) for i in range(12)]
    images = render_batch(scenes, 64, seed=3)
    prompts = [caption(scenes[(i + (i % 2)) % 12], i, FORMS[i % 6]) for i in range(12)]  # half mismatched
    expected = summary([score_image(im, p) for im, p in zip(images, prompts)])
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    whole = WorldSceneScore()
    whole.update(batch, prompts)
    halves = [WorldSceneScore(), WorldSceneScore()]
    halves[0].update(batch[:5], prompts[:5])
    halves[1].update(images[5:], prompts[5:])
    halves[0].merge_state(halves[1])
    for metric in (whole, halves[0]):
        out = metric.compute()
        assert float(out["all_hold"]) == pytest.approx(expected["all_hold"]["accuracy"])
        for kind in FACT_KINDS:
            if expected[kind]["accuracy"] is None:
                assert torch.isnan(out[kind])
            else:
                assert float(out[kind]) == pytest.approx(expected[kind]["accuracy"])


def test_overlay_draws_boxes_at_detections():
    image = render(Scene((_obj("star", "yellow", "large", 1, 1),), "black"), 64)
    overlay = draw_detections(image, detect(image), min_size=256)
    assert overlay.shape == (256, 256, 3)
    top, left, bottom, right = (v * 4 for v in detect(image).objects[0].bbox)
    assert (overlay[top - 1, left + 2 : right - 2] == 255).all()  # the box's top edge is white


# ----- the callback on a real Trainer ---------------------------------------------------------
@dataclass(frozen=True)
class Item:
    item_id: str
    condition: str
    condition_index: int
    prompt_index: int
    prompt: str
    original_prompt: str
    seed: int
    prompt_type: str | None = "world"
    metadata: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass
class Batch:
    items: list
    images: torch.Tensor
    metrics: dict = field(default_factory=dict)


class WorldGenerator(L.LightningModule):
    """Returns the rendering of each item's scene: a perfect generator for its original prompt."""

    def __init__(self, scenes: dict[str, Scene]) -> None:
        super().__init__()
        self.scenes = scenes
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch

    def predict_step(self, batch: list[Item], batch_idx: int) -> Batch:
        pixels = render_batch([self.scenes[i.item_id] for i in batch], 64, seed=batch_idx)
        return Batch(batch, torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)


class Recorder(L.Callback):
    def __init__(self) -> None:
        self.metrics: dict[str, dict[str, Any]] = {}

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        for i, item in enumerate(outputs.items):
            self.metrics[item.item_id] = {k: v[i] for k, v in outputs.metrics.items()}


def test_callback_scores_original_prompts_and_logs_overlays(tmp_path):
    scenes, items = {}, []
    for p in range(4):
        scene = sample_scene(80_000 + p, n_objects=2)
        text = caption(scene, p, "plain")
        for c, name in enumerate(("baseline", "shuffled")):
            item_id = f"{name}/p{p:03d}_s1"
            # Condition "shuffled" encodes an unrelated prompt; its original prompt is still this scene's.
            encoded = text if c == 0 else "a cat sleeping on a couch"
            items.append(Item(item_id, name, c, p, encoded, text, 1))
            scenes[item_id] = scene if p % 2 == 0 else sample_scene(81_000 + p, n_objects=2)
    recorder = Recorder()
    logger = TensorBoardLogger(tmp_path, name="lightning_logs", version="world")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=logger, callbacks=[SceneScoreCallback(overlay_images=3), recorder],
                        enable_progress_bar=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(items, batch_size=4, collate_fn=list)
    trainer.predict(WorldGenerator(scenes), loader, return_predictions=False)
    for item in items:
        values = recorder.metrics[item.item_id]
        assert set(values) == set(METRIC_NAMES)
        truth = score_scene(scenes[item.item_id], item.original_prompt)
        assert values["world_all"] == float(truth.all_hold)  # scored against the original prompt
        assert values["world_count"] is None and values["world_relation"] is None  # plain captions state neither
        assert (values["world_all"] == 1.0) == (item.prompt_index % 2 == 0)
    encoded = SceneScoreCallback(prompt="encoded")
    assert encoded.score(Batch([items[1]], torch.zeros(1, 3, 64, 64)), torch.device("cpu"))["world_all"] == [None]
    info = json.loads((Path(logger.log_dir) / "set_metrics.json").read_text())["world_colour"]["info"]
    prompts = {item.original_prompt for item in items}
    assert info["chance"] == pytest.approx(np.mean([chance_level(p)["colour"] for p in prompts]), abs=1e-4)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0}).Reload()
    assert len(events.Tags()["images"]) == 3 and all(t.startswith("world_overlay/") for t in events.Tags()["images"])


def test_chance_level_counts_random_scenes():
    scenes = _random_scenes(200, 0)
    chance = chance_level("a red circle and two blue stars on a black background")
    circles = np.mean([any(o.shape == "circle" for o in s.objects) for s in scenes])
    stars = np.mean([any(o.shape == "star" for o in s.objects) for s in scenes])
    assert chance["presence"] == pytest.approx((circles + stars) / 2)
    assert chance["count"] == pytest.approx(np.mean([sum((o.colour, o.shape) == ("blue", "star") for o in s.objects) == 2 for s in scenes]))
    assert chance["background"] == pytest.approx(np.mean([s.background == "black" for s in scenes]))


def test_shipped_prompt_files_match_their_generator():
    for name, text in expected_files().items():
        assert (FOLDER / name).read_text(encoding="utf-8") == text, f"regenerate {name}: python -m llm_dit.world.prompt_sets"


def test_overlays_pair_scores_with_the_items_that_were_scored():
    """A batch that mixes a resumed item (not scored again) with a new one: the one overlay shows the new item."""
    scene = sample_scene(82_000, n_objects=1)
    text = caption(scene, 0, "plain")
    resumed, new = (Item(f"c/p00{i}_s1", "c", 0, i, text, text, 1) for i in range(2))
    pixels = torch.from_numpy(render_batch([scene, scene], 64, seed=0)).permute(0, 3, 1, 2).float() / 255
    batch = Batch([resumed, new], pixels)
    batch.resumed = [True, False]
    sent = []
    experiment = SimpleNamespace(add_image=lambda tag, image, **kwargs: sent.append(tag))
    trainer = SimpleNamespace(logger=SimpleNamespace(experiment=experiment), is_global_zero=True)
    callback = SceneScoreCallback(overlay_images=8)
    callback.score_batch(batch, SimpleNamespace(device=torch.device("cpu")))
    callback._send_overlays(trainer)
    assert batch.metrics["world_all"] == [None, 1.0]  # the resumed item keeps its (absent) stored value
    assert sent == [f"world_overlay/c/p{new.prompt_index}_s1"]
