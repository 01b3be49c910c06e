"""Positive controls on the shipped weights: the chain sees an effect where one must exist.

World, model, surgery, evaluator and statistics together (issue 18): each control is a small study
run through the real command line (``cli_main(["predict", ...])``) on the synthetic world's prompt
sets, compared by the report's own comparison (``condition_table``: the paired difference to the
control, cluster bootstrap over prompts), and must come out with an interval that excludes 0:

(a) removing the nouns (prompt_transform remove_nouns) lowers object accuracy (world_presence);
(b) shuffling the adjectives (shuffle_adjectives) lowers colour binding (world_colour);
(c) 1 sampler step scores below 8 (world_all): not on the shipped weights, where 1 step scores highest
    (a strict xfail with the numbers: the control's premise does not hold in this world);
(d) skipping every DiT block (surgery skip on ``layers``) drops world_all to chance.

Images are scored against ``original_prompt``: the manipulated prompt is what the model read, the
original is what was asked. Sizes (20 prompts x 1 seed per condition, 64 px) keep the four under a
minute on 2 CPU cores with a model of the trained one's size.

They need the trained ``tiny`` (``llm_dit/models/embedded/tiny/``); while ``tiny`` resolves to
random weights they skip, saying so. ``test_positive_control_machinery_on_random_weights`` runs the
same studies on ``tiny-random`` now and checks everything but the direction of the effects: the
prompts each condition encodes, the settings it records, the scores (re-scored from the PNGs) and
the comparison (re-computed from the table).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from llm_dit.models.config import TINY, embedded_model_folder
from llm_dit.provenance import weights_are_random
from llm_dit.results.run_data import RunData, load_run
from llm_dit.results.tables import ConditionRow, condition_table

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "configs" / "prompts"
N_BOOT = 2000

# study name -> (prompt set, conditions); "control" is the plain pipeline in both.
STUDIES = {
    "positive_objects": (
        "world_one_object.txt",
        [
            {"name": "control"},
            {"name": "remove_nouns", "prompt_transform": "remove_nouns"},
            {"name": "steps=1", "sampler": {"steps": 1}},
            {"name": "skip_all_layers", "surgery": [{"variant": "skip", "target": "layers"}]},
        ],
    ),
    "positive_binding": (
        "world_colour_binding.txt",
        [{"name": "control"}, {"name": "shuffle_adjectives", "prompt_transform": "shuffle_adjectives"}],
    ),
}


def trained_tiny_missing() -> str | None:
    """Why the controls cannot run on the shipped weights (None when they can)."""
    folder = embedded_model_folder(TINY)
    if folder is None:
        return ("no trained embedded model at llm_dit/models/embedded/tiny/: `tiny` still resolves to random "
                "weights (tiny-random), on which no effect is expected")
    if weights_are_random(TINY):
        return (f"trained weights are at {folder}, but llm_dit.provenance.RANDOM_WEIGHTS still lists 'tiny' as "
                "random: remove it there so runs and reports call them trained")
    return None


def run_study(root: Path, name: str, weights: str, max_prompts: int, seeds: list[int]) -> RunData:
    """One positive-control study through the real CLI; returns its run folder as data."""
    prompt_file, conditions = STUDIES[name]
    config = {
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "callbacks": [{"class_path": "callbacks.scene_score.SceneScoreCallback", "init_args": {"overlay_images": 0}}],
        },
        "model": {"weights": weights, "dtype": "float32"},
        "data": {
            "class_path": "llm_dit.data.StudyDataModule",
            "init_args": {
                "batch_size": 10,
                "max_prompts": max_prompts,
                "study": {
                    "name": name,
                    "kind": "custom",
                    "prompts_file": str(PROMPTS / prompt_file),
                    "seeds": seeds,
                    "sampler": {"steps": 8, "shift": 3.0, "guidance_scale": 0.0, "height": 64, "width": 64},
                    "transform_seed": 0,
                    "control": "control",
                    "conditions": conditions,
                },
            },
        },
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    from llm_dit.cli import cli_main

    cli_main(["predict", "--config", str(path), "--trainer.default_root_dir", str(root),
              "--trainer.enable_progress_bar", "false"])
    return load_run(root / "lightning_logs" / name)


def comparison(run: RunData, metric: str, condition: str) -> ConditionRow:
    """The report's row for ``condition`` on ``metric`` (mean, and paired difference to the control)."""
    rows = {row.condition: row for row in condition_table(run, metric, N_BOOT, 0)}
    return rows[condition]


# ----- on the shipped weights ------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_runs(tmp_path_factory) -> dict[str, RunData]:
    reason = trained_tiny_missing()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("spacy", reason="the prompt manipulations tag parts of speech with spaCy: pip install 'llm-dit[pos]'")
    root = tmp_path_factory.mktemp("positive_controls")
    return {name: run_study(root, name, TINY, max_prompts=20, seeds=[42]) for name in STUDIES}


def assert_lowers(row: ConditionRow) -> None:
    difference = row.difference
    assert difference is not None and difference.n > 0, f"{row.condition}: no paired values"
    assert difference.mean < 0 and difference.excludes_zero, (
        f"{row.condition}: Δ vs control {difference.format(signed=True)} does not exclude 0 below it"
    )


def test_removing_the_nouns_lowers_object_accuracy(shipped_runs):
    assert_lowers(comparison(shipped_runs["positive_objects"], "world_presence", "remove_nouns"))


def test_shuffling_the_adjectives_lowers_colour_binding(shipped_runs):
    assert_lowers(comparison(shipped_runs["positive_binding"], "world_colour", "shuffle_adjectives"))


@pytest.mark.xfail(strict=True, reason=(
    "not on the shipped weights: in this world a caption fixes nearly the whole image, so one Euler step from "
    "sigma 1 (the conditional mean) already draws it, and later steps only roughen fill textures. "
    "`python -m llm_dit.world_model.evaluate llm_dit/models/embedded/tiny --split train --steps N`: every fact "
    "holds in 0.845 of 200 one-object prompts at 1 step, 0.76 at 2, 0.73 at 4, 0.70 at 8, 0.68 at 16 "
    "(benchmarks/NOTES.md, fifth session). strict: a model on which 8 steps do win turns this into a failure, "
    "so the mark goes when the effect appears"))
def test_one_step_scores_below_eight(shipped_runs):
    assert_lowers(comparison(shipped_runs["positive_objects"], "world_all", "steps=1"))


def test_skipping_every_dit_layer_drops_to_chance(shipped_runs):
    run = shipped_runs["positive_objects"]
    row = comparison(run, "world_all", "skip_all_layers")
    assert_lowers(row)
    chance = run.set_metrics["world_all"]["info"]["chance"]
    assert row.estimate.low <= chance, f"skip_all_layers: world_all {row.estimate.format()} is above chance {chance}"


# ----- the same machinery on random weights, now -----------------------------------------------


@pytest.fixture(scope="module")
def random_runs(tmp_path_factory) -> dict[str, RunData]:
    pytest.importorskip("spacy", reason="the prompt manipulations tag parts of speech with spaCy: pip install 'llm-dit[pos]'")
    root = tmp_path_factory.mktemp("positive_controls_random")
    return {name: run_study(root, name, "tiny-random", max_prompts=3, seeds=[42, 7]) for name in STUDIES}


def test_positive_control_machinery_on_random_weights(random_runs):
    from llm_dit.encoding.manipulations import remove_nouns, shuffle_adjectives
    from llm_dit.world import score_image
    from llm_dit.world.score import item_values

    objects, binding = random_runs["positive_objects"], random_runs["positive_binding"]
    assert objects.environment["weights"] == "tiny-random"
    # Each condition encoded what it says, and is scored against the prompt that was asked.
    for run, transforms in ((objects, {"remove_nouns": remove_nouns}), (binding, {"shuffle_adjectives": shuffle_adjectives})):
        for row in run.rows:
            transform = transforms.get(row["condition"])
            expected = transform(row["original_prompt"], seed=0 + row["prompt_index"]) if transform else row["original_prompt"]
            assert row["prompt"] == expected
            if transform:
                assert row["prompt"] != row["original_prompt"]
    assert {r["steps"] for r in objects.rows_of("steps=1")} == {1} and {r["steps"] for r in objects.rows_of("control")} == {8}
    assert objects.settings("skip_all_layers").surgery and objects.settings("control").surgery in ((), [], None)
    # The scores in the table are the evaluator's on the PNGs (independent re-scoring).
    for run in (objects, binding):
        for row in run.rows:
            image = np.asarray(Image.open(run.run_dir / row["image"]).convert("RGB"))
            values = item_values(score_image(image, row["original_prompt"]))
            for kind, value in values.items():
                stored = row.get(f"metric.world_{kind}")
                assert (stored is None and value is None) or stored == pytest.approx(value), (row["item_id"], kind)
    # Skipping every DiT block changes the image (the surgery ran).
    control = {(r["prompt_index"], r["seed"]): r for r in objects.rows_of("control")}
    for row in objects.rows_of("skip_all_layers"):
        twin = control[(row["prompt_index"], row["seed"])]
        assert not np.array_equal(np.asarray(Image.open(objects.run_dir / row["image"])),
                                  np.asarray(Image.open(objects.run_dir / twin["image"])))
    # The comparison is the paired mean of the table's values, over 3 prompts of 2 seeds.
    for run, metric, condition in ((objects, "world_presence", "remove_nouns"), (objects, "world_all", "steps=1"),
                                   (objects, "world_all", "skip_all_layers"), (binding, "world_colour", "shuffle_adjectives")):
        row = comparison(run, metric, condition)
        base = {(r["prompt_index"], r["seed"]): r[f"metric.{metric}"] for r in run.rows_of("control")}
        treated = {(r["prompt_index"], r["seed"]): r[f"metric.{metric}"] for r in run.rows_of(condition)}
        pairs = [treated[k] - base[k] for k in treated if treated[k] is not None and base.get(k) is not None]
        assert row.difference.n == len(pairs) == 6 and row.difference.clusters == 3
        assert row.difference.mean == pytest.approx(float(np.mean(pairs)))
        assert row.difference.low <= row.difference.mean + 1e-12 and row.difference.mean <= row.difference.high + 1e-12
        assert min(pairs) - 1e-12 <= row.difference.low and row.difference.high <= max(pairs) + 1e-12
        assert row.difference.excludes_zero == (row.difference.low > 0 or row.difference.high < 0)
    assert math.isfinite(objects.set_metrics["world_all"]["info"]["chance"])


def test_shuffle_adjectives_moves_only_adjectives():
    """Oracle: the same tokens, adjectives permuted among adjective positions, everything else in place."""
    pytest.importorskip("spacy", reason="needs spaCy: pip install 'llm-dit[pos]'")
    from llm_dit.encoding.manipulations import shuffle_adjectives, tag

    text = "A picture showing a little green disc and a big pink square; the backdrop is grey."
    before, after = tag(text), tag(shuffle_adjectives(text, seed=3))
    assert shuffle_adjectives(text, seed=3) != text and shuffle_adjectives(text, seed=3) == shuffle_adjectives(text, seed=3)
    words = text.replace(";", " ;").replace(".", " .").split()
    shuffled = shuffle_adjectives(text, seed=3).replace(";", " ;").replace(".", " .").split()
    adjectives = [w for w, (_, _, pos) in zip(words, before) if pos == "ADJ"]
    assert len(words) == len(shuffled) == len(before)
    assert Counter(shuffled) == Counter(words)
    assert [w for w, (_, _, pos) in zip(shuffled, before) if pos != "ADJ"] == [w for w, (_, _, pos) in zip(words, before) if pos != "ADJ"]
    assert Counter(w for w, (_, _, pos) in zip(shuffled, before) if pos == "ADJ") == Counter(adjectives)
    assert len(after) == len(before)
