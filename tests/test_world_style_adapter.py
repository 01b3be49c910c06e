"""The world style adapter (issue 18): configs/world_style_adapter.yaml fits the refiner adapter on the
world's striped set, configs/world_style_adapter_predict.yaml scores it, and `world_fill_<style>` (the
share of detected objects with one fill) is the style score the bar is read from.

On `tiny-random` these prove the workflow, not the bar: the fit config runs end to end through the
real CLI (shrunk), writes the world set and the adapter; the predict config runs with that adapter,
scale 0 is byte-identical to no adapter; the fill share equals the truth on rendered scenes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from callbacks.scene_score import SceneScoreCallback
from llm_dit.world.parse import expected_facts
from llm_dit.world.render import render_batch
from llm_dit.world.scene import STYLES, Scene, sample_scene
from llm_dit.world.score import fill_share, fill_share_chance
from llm_dit.world_model.style_data import PROMPTS_FILE, prompts_file_text

ROOT = Path(__file__).resolve().parents[1]
FIT_CONFIG = ROOT / "configs" / "world_style_adapter.yaml"
PREDICT_CONFIG = ROOT / "configs" / "world_style_adapter_predict.yaml"
FIT_STEPS = 4

pytestmark = pytest.mark.usefixtures("one_thread")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# ----- the style score: share of detected objects with one fill --------------------------


def known_fill_scenes(count: int, seed: int) -> list[Scene]:
    """Random world scenes whose objects get fills drawn here, so the truth is known independently."""
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(count):
        scene = sample_scene(rng)
        objects = tuple(replace(o, style=STYLES[int(rng.integers(len(STYLES)))]) for o in scene.objects)
        scenes.append(replace(scene, objects=objects))
    return scenes


def batch_of(images: np.ndarray, prompts: list[str]) -> SimpleNamespace:
    """What SceneScoreCallback.score reads: images [N, 3, H, W] in [0, 1] and items with prompts."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return SimpleNamespace(images=pixels, items=[SimpleNamespace(original_prompt=p, prompt=p) for p in prompts])


@pytest.mark.parametrize("size", [64, 128])
def test_fill_share_of_rendered_scenes_equals_their_true_share(size):
    scenes = known_fill_scenes(24, seed=size)
    images = render_batch(scenes, size, seed=np.random.default_rng(7))
    callback = SceneScoreCallback(fills=list(STYLES))
    # Two unrelated prompts, one naming a fill: the share reads the image, never the prompt.
    for prompt in ("One red circle against a white background.", "A large blue dotted square at the top left."):
        out = callback.score(batch_of(images, [prompt] * len(scenes)), torch.device("cpu"))
        for style in STYLES:
            truth = [sum(o.style == style for o in s.objects) / len(s.objects) for s in scenes]
            assert out[f"world_fill_{style}"] == pytest.approx(truth, abs=0), style
    assert any(0 < t < 1 for t in truth)  # mixed scenes, not only all-or-nothing shares


def test_fill_share_is_missing_without_objects_and_rejects_unknown_styles():
    blank = np.full((1, 64, 64, 3), 236, np.uint8)  # the white background, nothing on it
    out = SceneScoreCallback(fills=["striped"]).score(batch_of(blank, ["One red circle."]), torch.device("cpu"))
    assert out["world_fill_striped"] == [None]
    assert "world_fill_striped" in SceneScoreCallback(fills=["striped"]).metric_names
    assert not any(n.startswith("world_fill_") for n in SceneScoreCallback().metric_names)  # off by default
    with pytest.raises(ValueError, match="'wavy'"):
        SceneScoreCallback(fills=["wavy"])
    with pytest.raises(ValueError, match="'wavy'"):
        fill_share([], "wavy")


def test_fill_share_chance_is_the_share_in_random_scenes():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng) for _ in range(200)]
    for style in STYLES:
        truth = np.mean([sum(o.style == style for o in s.objects) / len(s.objects) for s in scenes])
        assert fill_share_chance(style) == pytest.approx(truth, abs=1e-12)
    info = SceneScoreCallback(fills=["striped"]).info("world_fill_striped")
    assert info["chance"] == round(fill_share_chance("striped"), 4) and "whatever the prompt" in info["definition"]


def test_report_direction_of_the_fill_share():
    from llm_dit.results.run_data import direction

    assert direction("world_fill_striped") == 1


# ----- prompts and configs -----------------------------------------------------------------


def test_style_free_prompt_file_is_regenerated_and_names_no_fill():
    assert PROMPTS_FILE.read_text(encoding="utf-8") == prompts_file_text()
    lines = [line for line in PROMPTS_FILE.read_text().splitlines() if line and not line.startswith("#")]
    assert len(lines) == 20
    for line in lines:
        kind, text = (part.strip() for part in line.split("|", 1))
        facts = expected_facts(text)
        assert kind in ("style_free", "style_free_heldout") and facts.objects
        assert all(fact.style is None for fact in facts.objects), text


def test_configs_agree_with_each_other():
    fit, predict = load(FIT_CONFIG), load(PREDICT_CONFIG)
    data = fit["data"]["init_args"]
    assert data["synthesize_if_missing"] == "world_striped" and data["resolution"] == 64
    study = predict["data"]["init_args"]["study"]
    paths = {s["path"] for c in study["conditions"] for s in c.get("surgery", [])}
    assert paths == {f"lightning_logs/{data['run_name']}/adapter"}
    scales = {c["name"]: [s["scale"] for s in c.get("surgery", [])] for c in study["conditions"]}
    assert scales[study["control"]] == [] and [0.0] in scales.values() and [1.0] in scales.values()
    prompts = PROMPTS_FILE.read_text()
    assert all(p in prompts for p in fit["model"]["fit"]["validation_prompts"])
    scene = next(c for c in predict["trainer"]["callbacks"] if c["class_path"].endswith("SceneScoreCallback"))
    assert scene["init_args"]["fills"] == ["striped"]


# ----- the two commands, shrunk, on tiny-random ---------------------------------------------


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """`fit --config configs/world_style_adapter.yaml` on tiny-random, a few steps; the data module
    writes the world's striped set into a missing folder, as on a fresh clone."""
    from llm_dit.cli import cli_main

    root = tmp_path_factory.mktemp("world_fit")
    cli = cli_main([
        "fit", "--config", str(FIT_CONFIG), "--model.weights", "tiny-random", "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
        "--trainer.max_steps", str(FIT_STEPS), "--trainer.val_check_interval", str(FIT_STEPS),
        "--trainer.num_sanity_val_steps", "0", "--model.fit.validation_sampler", "{steps: 2}",
        "--model.fit.adapter.warmup_steps", "0", "--model.fit.adapter.learning_rate", "0.01",
        "--data.init_args.folder", str(root / "world_striped_data"), "--data.init_args.batch_size", "4",
        "--data.init_args.val_examples", "4",
    ])
    yield cli, root
    cli.model.trainable_adapter.remove()  # the live-surgery table is process-wide: leave it empty


def test_fit_writes_the_world_set_and_the_adapter(fitted):
    _, root = fitted
    images = sorted((root / "world_striped_data").glob("*.png"))
    assert len(images) == 256 and all(p.with_suffix(".txt").is_file() for p in images)
    run = root / "lightning_logs" / "world_style_adapter"
    spec = json.loads((run / "adapter" / "adapter.json").read_text())
    assert spec["target"] == "context_refiner" and spec["variant"] == "lora"
    assert spec["info"]["resolution"] == 64 and spec["info"]["global_step"] == FIT_STEPS
    assert (run / "adapter" / "adapter.safetensors").is_file()


def test_predict_config_runs_with_the_adapter_and_scale_zero_is_the_control(fitted, monkeypatch):
    from llm_dit.cli import cli_main

    _, root = fitted
    monkeypatch.chdir(root)  # where fit wrote lightning_logs/world_style_adapter/adapter
    monkeypatch.setattr("sys.argv", ["llm_dit.cli"])
    cli_main([
        "predict", "--config", str(PREDICT_CONFIG), "--model.weights", "tiny-random", "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false", "--data.init_args.max_prompts", "2", "--data.init_args.max_seeds", "1",
        "--data.init_args.study.sampler.steps", "2",
    ])
    run = root / "lightning_logs" / "world_style_adapter_predict"
    study = load(PREDICT_CONFIG)["data"]["init_args"]["study"]
    control = study["control"]
    zero = next(c["name"] for c in study["conditions"] if [s["scale"] for s in c.get("surgery", [])] == [0.0])
    one = next(c["name"] for c in study["conditions"] if [s["scale"] for s in c.get("surgery", [])] == [1.0])
    for name in ("p000_s0.png", "p001_s0.png"):
        base = (run / "images" / control / name).read_bytes()
        assert (run / "images" / zero / name).read_bytes() == base
        assert (run / "images" / one / name).read_bytes() != base
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == 2 * len(study["conditions"])
    assert all("metric.world_fill_striped" in row and "metric.world_all" in row for row in rows)
