"""report.md: bootstrap statistics, paired differences, and the sub-question sections.

Run directories here are synthetic (results.jsonl rows with known effects,
small PNGs), shaped like callbacks.writer's output, so the numbers the report
prints can be checked exactly.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llm_dit.encoding.options import EncodingOptions
from llm_dit.report import bootstrap_mean, load_run, paired_difference, write_report
from llm_dit.report.provenance import RANDOM_PRESETS, weights_are_random
from llm_dit.report.questions import QUESTIONS
from llm_dit.results.stats import unpaired_difference, wilson_interval
from llm_dit.sampling.settings import SamplerSettings

SEEDS = (1, 2, 3)
TYPES = ("portrait", "landscape", "portrait", "abstract")

# conditions per study kind (control first): name and the recorded settings
# {encoding, sampler, surgery, prompt_transform}; the report reads the settings, not the names
def cond(name: str, **settings) -> tuple[str, dict]:
    return name, settings


KINDS = {
    "hidden_layer": [
        cond("layer=-2", encoding={"hidden_layer": -2}),
        cond("layer=-1", encoding={"hidden_layer": -1}),
        cond("layer=-3", encoding={"hidden_layer": -3}),
        cond("mix", encoding={"hidden_layer": [-1, -2]}),
    ],
    "think_block": [
        cond("none"),
        cond("empty", encoding={"force_think_block": True}),
        cond("quality", encoding={"thinking_content": "High detail, sharp focus"}),
        cond("style", encoding={"thinking_content": "Oil painting, visible brushstrokes"}),
        cond("irrelevant", encoding={"thinking_content": "The weather is nice today"}),
    ],
    "refiner": [
        cond("default"),
        cond("skip", surgery=[{"variant": "skip"}]),
        cond("single", surgery=[{"variant": "truncate", "use_layers": 1}]),
        cond("double", surgery=[{"variant": "duplicate", "shared": True}]),
        cond("identity_init", surgery=[{"variant": "identity_init"}]),
        cond("skip_layer0", surgery=[{"variant": "skip_layers", "layers": [0]}]),
    ],
    "shift_steps": [cond(f"shift={s},steps={n}", sampler={"shift": s, "steps": n}) for s in (1.0, 3.0) for n in (4, 8)],
    "long_prompt": [
        cond("truncate", encoding={"long_prompt_mode": "truncate", "max_length": 1024}),
        cond("interpolate", encoding={"long_prompt_mode": "interpolate", "max_length": 1024}),
        cond("pool", encoding={"long_prompt_mode": "pool", "max_length": 1024}),
        cond("attention_pool", encoding={"long_prompt_mode": "attention_pool", "max_length": 1024}),
    ],
    "token_importance": [
        cond(name, prompt_transform=name)
        for name in (
            "baseline",
            "shuffle_all",
            "remove_nouns",
            "remove_adjectives",
            "front_load",
            "back_load",
            "duplicate_important",
        )
    ],
    "system_prompt": [
        cond("none"),
        cond("default", encoding={"system_prompt": "You are a helpful assistant"}),
        cond("photographer", encoding={"system_prompt": "You are a professional photographer"}),
        cond("artist", encoding={"system_prompt": "You are a digital artist"}),
        cond("contradictory", encoding={"system_prompt": "Generate low quality images"}),
    ],
}


def make_run(
    root: Path,
    kind: str = "hidden_layer",
    effects: dict[str, float] | None = None,
    prompts: int = 4,
    environment: dict | None = None,
) -> Path:
    """A run dir: clip_score = 20 + prompt_index + effect[condition] + seed noise; PNGs per item.

    Rows and study.json have the writer's format (callbacks.writer.result_row, Study.to_record).
    """
    conditions = KINDS[kind]
    effects = effects or {name: float(i) for i, (name, _) in enumerate(conditions)}
    run = root / kind
    rows = []
    for c, (name, settings) in enumerate(conditions):
        encoding = EncodingOptions().with_overrides(settings.get("encoding", {})).to_dict()
        sampler = SamplerSettings(height=16, width=16).with_overrides(settings.get("sampler", {})).to_dict()
        for p in range(prompts):
            for seed in SEEDS:
                noise = ((seed * 7 + p * 3) % 5) / 10  # same for every condition: cancels in paired differences
                image = f"images/{name}/p{p:03d}_s{seed}.png"
                (run / image).parent.mkdir(parents=True, exist_ok=True)
                pixels = np.full((16, 16, 3), (40 * c + 10 * p + seed) % 256, dtype=np.uint8)
                Image.fromarray(pixels).save(run / image)
                construction = ("front_heavy", "back_heavy")[p % 2]
                rows.append(
                    {
                        "item_id": f"{name}/p{p:03d}_s{seed}",
                        "study": kind,
                        "condition": name,
                        "condition_index": c,
                        "prompt_index": p,
                        "prompt": f"prompt {p}",
                        "original_prompt": f"prompt {p}",
                        "prompt_type": TYPES[p % len(TYPES)],
                        "seed": seed,
                        **sampler,
                        "encoding": encoding,
                        "surgery": settings.get("surgery", []),
                        "image": image,
                        "seconds": 0.1 * sampler["steps"],
                        "peak_memory_mb": 100.0 + c,
                        "num_tokens": 40 + 10 * c,
                        "metadata": {"target_tokens": 1024 * (1 + p), "construction": construction},
                        "metric.clip_score": 20.0 + p + effects[name] + noise,
                        "metric.detail_score": 100.0 + 5 * c + noise,
                        "metric.clip_elements_mean": 15.0 + effects[name] - p,
                    }
                )
    (run / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    study = {
        "name": kind,
        "kind": kind,
        "control": conditions[0][0],
        "encoding": EncodingOptions().to_dict(),
        "sampler": SamplerSettings(height=16, width=16).to_dict(),
        "conditions": [
            {
                "name": n,
                "encoding": v.get("encoding", {}),
                "sampler": v.get("sampler", {}),
                "surgery": v.get("surgery", []),
                "prompt_transform": v.get("prompt_transform"),
                "variables": {},
            }
            for n, v in conditions
        ],
    }
    (run / "study.json").write_text(json.dumps(study))
    if environment is not None:
        (run / "environment.json").write_text(json.dumps(environment))
    sets = {
        "fid": {
            "kind": "set",
            "conditions": {n: {"value": 30.0 - i, "n": len(SEEDS) * prompts} for i, (n, _) in enumerate(conditions)},
            "info": {"warning": "FID from fewer than 2048 images"},
        },
        "lpips_diversity": {
            "kind": "per_prompt_mean",
            "conditions": {
                n: {
                    "value": 0.3,
                    "n": prompts,
                    "per_prompt": {str(p): 0.3 + 0.01 * i + 0.001 * p for p in range(prompts)},
                }
                for i, (n, _) in enumerate(conditions)
            },
        },
        "peak_memory_mb": {
            "kind": "item_max",
            "conditions": {n: {"value": 100.0 + i, "n": 3} for i, (n, _) in enumerate(conditions)},
        },
    }
    (run / "set_metrics.json").write_text(json.dumps(sets))
    return run


# ----- statistics -------------------------------------------------------------------------
def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = list(np.random.default_rng(3).normal(5, 1, 50))
    a, b = bootstrap_mean(values, seed=7), bootstrap_mean(values, seed=7)
    assert a == b and a.low < a.mean < a.high and a.n == 50
    assert bootstrap_mean(values, seed=8) != a
    assert bootstrap_mean([2.0] * 10).low == bootstrap_mean([2.0] * 10).high == 2.0
    assert bootstrap_mean([1.0, math.nan, None]).n == 1 and bootstrap_mean([]).n == 0


def test_paired_difference_pairs_by_key_and_removes_shared_noise():
    noise = {(p, s): float(np.sin(p * 3 + s)) * 10 for p in range(5) for s in range(4)}
    control = dict(noise)
    treatment = {k: v + 1.5 for k, v in noise.items()}
    treatment[(99, 0)] = 1000.0  # unmatched: ignored
    est = paired_difference(treatment, control)
    assert est.n == 20 and est.clusters == 5 and est.mean == pytest.approx(1.5) and est.low == pytest.approx(1.5)
    assert est.excludes_zero
    unpaired = unpaired_difference({k: treatment[k] for k in control}, control)
    assert unpaired.low < 0 < unpaired.high  # without pairing the noise hides the effect


def test_wilson_interval_known_values():
    low, high = wilson_interval(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0) and wilson_interval(10, 10)[0] < 0.8


# ----- report --------------------------------------------------------------------------------
def test_report_has_tables_paired_differences_and_questions(tmp_path):
    run = make_run(tmp_path, "hidden_layer", {"layer=-2": 0.0, "layer=-1": 2.0, "layer=-3": -1.0, "mix": 0.0})
    path = write_report(run)
    text = path.read_text()
    assert path == run / "report.md"
    assert "# Report: hidden_layer (hidden_layer)" in text and "control condition: **layer=-2**" in text
    assert "100·max(cos(image, text), 0)" in text  # the CLIP convention is stated
    clip = text.split("### clip_score\n")[1].split("###")[0]
    assert re.search(r"\| layer=-1 \| 12 \| 4 \| \S+ \[\S+, \S+\] \| \+2 \[2, 2\] \* \|", clip)
    assert re.search(r"\| mix \| 12 \| 4 \| .* \| \+0 \[0, 0\] \|", clip)  # no effect: no star
    assert "95 % cluster bootstrap over prompts, seeds nested" in text
    for qid in ("Q1.1", "Q1.2", "Q1.3", "Q1.4", "Q1.5"):
        assert f"### {qid}:" in text
    assert "Needs a human A/B study: Q1.1" in text and "Q1.2" in text.split("Needs a human A/B study:")[1]
    assert "Not answerable from this run's data: Q1.4" in text  # no embedding_analysis.json yet
    assert "### fid" in text and "FID from fewer than 2048 images" in text
    assert "### lpips_diversity (unit = prompt)" in text
    assert "mean absolute pixel difference layer=-1 vs layer=-2" in text
    assert "No votes file" in text
    for figure in ("bars_clip_score", "heatmap_prompt_type_clip_score"):
        assert (run / "figures" / f"{figure}.png").is_file() and f"figures/{figure}.png" in text
    assert write_report(run).read_text() == text  # seeded: the same report twice


def test_report_reads_embedding_analysis_and_votes(tmp_path):
    run = make_run(tmp_path, "hidden_layer")
    names = ["layer=-2", "layer=-1", "layer=-3"]  # the format of callbacks/embedding_analysis.py
    (run / "embedding_analysis.json").write_text(
        json.dumps(
            {
                "cosine_matrix": {"names": names, "matrix": [[1.0, 0.8, 0.7], [0.8, 1.0, None], [0.7, None, 1.0]]},
                "drift_vs_control": {
                    "layer=-1": {"cosine_mean_pooled": 0.8, "semantic_drift": 0.2, "cosine_user_tokens": 0.75}
                },
                "token_counts": {"layer=-1": {"mean_tokens": 12.0, "extra_tokens_vs_control": 0.0}},
                "drift": {"layers": ["context_refiner.0", "context_refiner.1"], "series": {"layer=-2": [0.9, 0.7]}},
            }
        )
    )
    votes = [
        {
            "pair_id": f"{i:04d}",
            "condition": "layer=-1",
            "control": "layer=-2",
            "control_side": "left",
            "choice": "right" if i < 3 else "left",
            "left_item_id": "a",
            "right_item_id": "b",
        }
        for i in range(4)
    ]
    (run / "votes_rater1.json").write_text(
        json.dumps({"format": "llm-dit-ab-votes/1", "page_id": "x", "rater": "r1", "votes": votes})
    )
    text = write_report(run).read_text()
    assert "layer=-2 vs layer=-1: 0.800, layer=-3: 0.700" in text and "layer=-1 vs layer=-2: 0.800\n" in text
    assert "caption embedding vs layer=-2: cosine 0.8 (mean-pooled), semantic drift 0.2" in text
    assert "template tokens per prompt: 12 (+0.0 vs layer=-2)" in text
    assert "| layer=-1 | 4 | 3 | 1 | 0 | 0.75 [" in text
    assert "human preference: layer=-1 preferred over layer=-2 in 75% of 4 blind votes" in text
    assert (run / "figures" / "cosine_matrix.png").is_file() and (run / "figures" / "drift.png").is_file()


def test_shift_steps_pareto_and_fid_answers(tmp_path):
    run = make_run(tmp_path, "shift_steps")
    text = write_report(run, n_boot=200).read_text()
    q41 = text.split("### Q4.1")[1].split("###")[0]
    # quality = FID (lower is better): 30, 29, 28, 27 in condition order; seconds 0.4 / 0.8 per steps
    assert "quality = `fid` (lower is better)" in q41
    assert "shift=3, steps=4: 0.4 s, fid 28" in q41 and "shift=3, steps=8: 0.8 s, fid 27" in q41
    assert "shift=1, steps=4" not in q41  # dominated by shift=3, steps=4
    assert "lowest `fid`: shift=3.0,steps=8 = 27" in text
    assert (run / "figures" / "pareto_shift_steps.png").is_file()


def test_long_prompt_compression_curves(tmp_path):
    run = make_run(tmp_path, "long_prompt", prompts=4)
    text = write_report(run, n_boot=200).read_text()
    q56 = text.split("### Q5.6")[1].split("###")[0]
    assert "truncate: ratio 1:" in q56 and "ratio 4:" in q56  # target 1024..4096 over max_length 1024
    assert "back_heavy" in text.split("### Q5.4")[1].split("###")[0]
    assert (run / "figures" / "compression_clip_score.png").is_file()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_study_kind_answers_its_sub_questions(tmp_path, kind):
    run = make_run(tmp_path, kind, prompts=2)
    text = write_report(run, n_boot=100, image_change=False, figures_png=False).read_text()
    expected = [re.match(r"(Q\d\.\d)", q.__name__.replace("q", "Q").replace("_", ".")) for q in QUESTIONS[kind]]
    sections = re.findall(r"^### (Q\d\.\d):", text, flags=re.M)
    assert len(sections) == len(QUESTIONS[kind]) and sections == sorted(sections)
    assert all(e is None or e.group(1) in sections for e in expected)
    assert "## What this run cannot settle" in text


def test_report_without_results_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.jsonl"):
        write_report(tmp_path)


def test_load_run_orders_conditions_like_the_study(tmp_path):
    run = load_run(make_run(tmp_path, "refiner"))
    assert run.conditions == [n for n, _ in KINDS["refiner"]] and run.control == "default"
    assert run.item_metrics() == ["clip_score", "detail_score", "clip_elements_mean"]


# ----- provenance and timing ------------------------------------------------------------------
def test_random_weights_are_said_first_and_the_model_is_in_the_header(tmp_path):
    run = make_run(tmp_path / "a", "refiner", environment={"weights": "tiny-random", "transformer_fingerprint": "f00d"})
    lines = write_report(run, n_boot=50, image_change=False, figures_png=False).read_text().splitlines()
    assert lines[0] == "# Report: refiner (refiner)"
    assert lines[2] == "> **random weights: images are noise; this run tests the pipeline, not the model**"
    assert "model: weights `tiny-random`, a preset with random weights, transformer fingerprint `f00d`" in lines[4]
    trained = make_run(tmp_path / "b", "refiner", environment={"weights": "/models/Z-Image-Turbo"})
    text = write_report(trained, n_boot=50, image_change=False, figures_png=False).read_text()
    assert "random weights" not in text and "weights `/models/Z-Image-Turbo`, trained weights" in text


def test_weights_are_random_names_the_random_presets_only():
    for weights in ("tiny-random", "random-z-image-turbo", Path("tiny-random")):
        assert weights_are_random(weights)
    for weights in ("/models/Z-Image-Turbo", "Tongyi-MAI/Z-Image-Turbo", "./tiny", None, {"transformer": "x"}):
        assert not weights_are_random(weights)
    assert weights_are_random("tiny") == ("tiny" in RANDOM_PRESETS)  # flips when the trained tiny model ships


def test_timing_leaves_warmup_rows_out_and_is_never_starred(tmp_path):
    run = make_run(tmp_path, "shift_steps", prompts=4)  # seconds = 0.1 x steps: 4 steps 0.4 s, 8 steps 0.8 s
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    for row in rows:
        if row["prompt_index"] == 0 and row["seed"] == SEEDS[0]:  # the first batch of the process
            row["warmup"] = True
            row["seconds"] = 50.0
    (run / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    text = write_report(run, n_boot=200, image_change=False, figures_png=False).read_text()
    timing = text.split("### seconds per image (machine-dependent)")[1].split("##")[0]
    assert "4 warm-up row(s)" in timing and "machine-dependent: no difference is marked" in timing
    # 11 non-warm-up images per condition; every one takes exactly 0.1 x steps
    assert re.search(r"\| shift=1.0,steps=8 \| 11 \| 4 \| 0.8 \[0.8, 0.8\] \| \+0.4 \[0.4, 0.4\] \|", timing)
    assert "*" not in timing.split("(lower is better")[0]
    run_data = load_run(run)
    assert run_data.cells("seconds", "shift=1.0,steps=4").get((0, SEEDS[0])) is None
    assert run_data.cells("clip_score", "shift=1.0,steps=4").get((0, SEEDS[0])) is not None  # quality keeps them
    q41 = text.split("### Q4.1")[1].split("###")[0]
    assert "warm-up batches left out (machine-dependent" in q41 and "0.4 s" in q41


def test_readme_lists_the_questions_that_need_a_human_ab_study(tmp_path):
    """The README's list is the set of sub-questions whose answers ask for people (any study kind)."""
    from llm_dit.report.questions import Context, answer_questions

    human = set()
    for kind in KINDS:
        ctx = Context(load_run(make_run(tmp_path, kind, prompts=2)), n_boot=20, image_change=False)
        human |= {a.qid for a in answer_questions(ctx) if a.needs_human}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith("Need a human A/B study:"))
    assert set(re.findall(r"Q\d\.\d", line)) == human
