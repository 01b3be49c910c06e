"""The report on every shipped config: sub-questions compare the right conditions, whatever their names.

For each study config in configs/ a smoke-sized run directory is written from
the config's own resolved study (2 prompts x 2 seeds x every condition): rows
in the writer's format (``callbacks.writer.result_row`` on ``StudyItem``s),
study.json from ``Study.to_record``. Metric values are a function of each
condition's settings (a hash of them), never of its name. Then:

* every answered sub-question compares exactly the conditions a person reading
  the config would pick (the table ``EXPECTED``, written by hand from the
  configs: the independent oracle);
* renaming the conditions (a cyclic shift of the names, so "skip" is called
  "default" and the other way round) changes no answer: the same comparisons
  with the same numbers, under the new names.

One slow test does the same through real ``predict`` runs of refiner_skip.yaml
on the tiny model, with the two condition names swapped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from callbacks.writer import result_row
from llm_dit.outputs import GeneratedBatch
from llm_dit.report import load_run, write_report
from llm_dit.report.questions import Answer, Context, answer_questions
from llm_dit.study import ConditionSpec, Study, StudyItem

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
PROMPTS, SEEDS = 2, 2

# What each answered sub-question must compare, (condition, against), by the configs' own names.
EXPECTED: dict[str, dict[str, set[tuple[str, str]]]] = {
    "baseline.yaml": {},
    "hidden_layer.yaml": {
        "Q1.1": {("hidden_layer=-1", "hidden_layer=-2")},
        "Q1.5": {
            ("hidden_layer=-1+-2,combine=mean", "hidden_layer=-2"),
            ("hidden_layer=all,combine=normalized_mean", "hidden_layer=-2"),
        },
    },
    "long_prompt.yaml": {
        "Q5.2": {("attention_pool", "truncate"), ("attention_pool", "interpolate"), ("attention_pool", "pool")},
        "Q5.3": {("interpolate", "pool")},
    },
    "refiner_depth.yaml": {
        "Q3.1": {("skip", "default")},
        "Q3.3": {("double", "default")},
        "Q3.5": {("single", "default")},
    },
    "refiner_layerwise.yaml": {"Q3.5": {("skip_layer_0", "default"), ("skip_layer_1", "default")}},
    "refiner_skip.yaml": {"Q3.1": {("skip", "default")}},
    "refiner_style_adapter_predict.yaml": {
        "Q3.4": {("adapter=0.5", "base"), ("adapter=1.0", "base"), ("adapter=1.5", "base")},
    },
    "shift_steps.yaml": {
        "Q4.2": {(f"shift=1.0,steps={n}", f"shift=3.0,steps={n}") for n in (4, 6, 8, 9, 12, 16, 25)},
    },
    "system_prompt.yaml": {
        "Q7.1": {("none", "default")},
        "Q7.2": {("photographer", "none")},
        "Q7.3": {("artist", "none")},
        "Q7.5": {("contradictory", "none")},
    },
    "think_block.yaml": {
        "Q2.1": {("empty", "none")},
        "Q2.2": {("quality", "none"), ("negative", "none")},  # "Avoid blur, distortion, artifacts": about quality
        "Q2.3": {("style", "none")},
        "Q2.4": {("irrelevant", "none")},
    },
    "world_style_adapter_predict.yaml": {
        "Q3.4": {("adapter=0", "no_adapter"), ("adapter=0.5", "no_adapter"), ("adapter=1", "no_adapter")},
    },
    "token_importance.yaml": {
        "Q6.1": {("shuffle_all", "baseline"), ("shuffle_nouns", "baseline")},
        "Q6.2": {("remove_nouns", "baseline"), ("remove_adjectives", "baseline"), ("remove_nouns", "remove_adjectives")},
        "Q6.3": {("front_load", "baseline"), ("back_load", "baseline")},
        "Q6.4": {("duplicate_important", "baseline")},
    },
}

_PROMPTS: dict[str, list] = {}  # config -> resolved prompts (the long-prompt generator takes seconds)


def study_of(config: Path) -> Study | None:
    """The config's study with its prompts resolved and cut to the smoke size; None for fit configs."""
    data = (yaml.safe_load(config.read_text()).get("data") or {}).get("init_args") or {}
    if "study" not in data:
        return None
    spec = dict(data["study"])
    if config.name not in _PROMPTS:
        _PROMPTS[config.name] = Study(**spec).resolved_prompts()[:PROMPTS]
    spec.update(prompts=_PROMPTS[config.name], prompts_file=None, prompt_generator=None, seeds=spec["seeds"][:SEEDS])
    return Study(**spec)


def renamed(study: Study, shift: int = 1) -> tuple[Study, dict[str, str]]:
    """The same study with every condition renamed to the name of the condition ``shift`` places on."""
    conditions = study.resolved_conditions()
    names = [c.name for c in conditions]
    mapping = {name: names[(i + shift) % len(names)] for i, name in enumerate(names)}
    spec = {f.name: getattr(study, f.name) for f in dataclasses.fields(study)}
    spec.update(
        conditions=[dataclasses.replace(c, name=mapping[c.name]) for c in conditions],
        variables={},
        control=mapping[study.control],
    )
    return Study(**spec), mapping


def settings_value(item: StudyItem, transform: str | None) -> float:
    """A number in [0, 3) from everything the condition sets, and nothing else (not its name)."""
    text = json.dumps(
        [item.encoding.to_dict(), item.sampler.to_dict(), list(item.surgery), transform], sort_keys=True, default=str
    )
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 2**32 * 3


def write_run(study: Study, folder: Path) -> Path:
    """results.jsonl + study.json + environment.json as a predict run would leave them (no PNGs)."""
    folder.mkdir(parents=True)
    rows = []
    for c_index, condition in enumerate(study.resolved_conditions()):
        encoding = study.baseline_encoding().with_overrides(condition.encoding)
        sampler = study.baseline_sampler().with_overrides(condition.sampler)
        for p_index, prompt in enumerate(study.resolved_prompts()):
            for seed in study.seeds:
                item = StudyItem(
                    item_id=f"{condition.name}/p{p_index:03d}_s{seed}",
                    study=study.name,
                    condition=condition.name,
                    condition_index=c_index,
                    prompt_index=p_index,
                    prompt=prompt.text,
                    original_prompt=prompt.text,
                    prompt_type=prompt.type,
                    seed=int(seed),
                    encoding=encoding,
                    sampler=sampler,
                    surgery=tuple(condition.surgery),
                    prompt_transform=condition.prompt_transform or None,
                    variables=dict(condition.variables),
                    metadata=dict(prompt.metadata),
                )
                effect = settings_value(item, condition.prompt_transform)
                noise = ((seed * 7 + p_index * 3) % 5) / 10
                batch = GeneratedBatch(
                    items=[item],
                    images=torch.zeros(1, 3, 16, 16),
                    seconds_per_image=0.1 * sampler.steps,
                    peak_memory_bytes=None,
                    resumed=[False],
                    metrics={
                        "clip_score": [20.0 + 2 * p_index + effect + noise],
                        "detail_score": [100.0 + 10 * effect + noise],
                        "clip_elements_mean": [15.0 + effect - p_index],
                    },
                )
                rows.append(result_row(batch, 0))
    (folder / "results.jsonl").write_text("\n".join(json.dumps(r, default=str) for r in rows) + "\n")
    (folder / "study.json").write_text(json.dumps(study.to_record(), default=str))
    (folder / "environment.json").write_text(json.dumps({"weights": "tiny-random", "transformer_fingerprint": "0" * 16}))
    return folder


def answers_of(folder: Path) -> dict[str, Answer]:
    ctx = Context(load_run(folder), n_boot=200, image_change=False)
    return {a.qid: a for a in answer_questions(ctx)}


def check_expected(answers: dict[str, Answer], expected: dict[str, set[tuple[str, str]]]) -> None:
    for qid, answer in answers.items():
        want = expected.get(qid, set())
        assert set(answer.pairs) == want, f"{qid} compares {answer.pairs}, expected {sorted(want)}"
        if want:
            assert answer.answerable


def same_answers(original: dict[str, Answer], other: dict[str, Answer], mapping: dict[str, str]) -> None:
    """``other`` (a renamed run) answers as ``original`` does, names mapped through ``mapping``."""
    assert original.keys() == other.keys()
    for qid, answer in original.items():
        twin = other[qid]
        assert (twin.answerable, twin.needs_human, len(twin.lines)) == (
            answer.answerable,
            answer.needs_human,
            len(answer.lines),
        ), qid
        want = [(mapping[c.condition], mapping[c.against], c.metric, c.estimate) for c in answer.comparisons]
        got = [(c.condition, c.against, c.metric, c.estimate) for c in twin.comparisons]
        assert got == want, qid
        assert twin.shown == [mapping[c] for c in answer.shown], qid


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_answers_with_the_right_conditions_under_any_names(config, tmp_path):
    study = study_of(config)
    if study is None:
        data = yaml.safe_load(config.read_text())["data"]
        assert data["class_path"].endswith("ImageCaptionDataModule"), f"{config.name}: neither a study nor a fit config"
        pytest.skip(f"{config.name} is a fit config (no study to report on)")
    folder = write_run(study, tmp_path / "original")
    text = write_report(folder, n_boot=100, image_change=False, figures_png=False).read_text()
    assert "random weights: images are noise" in text.splitlines()[2]
    answers = answers_of(folder)
    if config.name in EXPECTED:
        check_expected(answers, EXPECTED[config.name])
    other, mapping = renamed(study)
    assert any(k != v for k, v in mapping.items()) or len(mapping) == 1
    same_answers(answers, answers_of(write_run(other, tmp_path / "renamed")), mapping)


def test_every_study_config_has_expectations():
    """A new study config gets its row in EXPECTED (what each sub-question should compare)."""
    studies = [c.name for c in CONFIGS if study_of(c) is not None]
    assert sorted(set(studies) - set(EXPECTED)) == []


def test_q3_4_is_answered_when_the_run_has_a_style_adapter(tmp_path):
    study = study_of(ROOT / "configs" / "refiner_skip.yaml")
    adapter = {"variant": "style_adapter", "path": "lightning_logs/refiner_style_adapter/adapter", "scale": 0.5}
    study.conditions = study.resolved_conditions() + [ConditionSpec(name="zstripe", surgery=[adapter])]
    answers = answers_of(write_run(study, tmp_path / "run"))
    assert answers["Q3.4"].answerable and set(answers["Q3.4"].pairs) == {("zstripe", "default")}
    assert "adapter lightning_logs/refiner_style_adapter/adapter at scale 0.5" in "\n".join(answers["Q3.4"].lines)
    check_expected(answers, {"Q3.1": {("skip", "default")}, "Q3.4": {("zstripe", "default")}})
    other, mapping = renamed(study)
    same_answers(answers, answers_of(write_run(other, tmp_path / "renamed")), mapping)


def test_a_confounded_condition_is_not_compared(tmp_path):
    """A skip that also changes the hidden layer does not answer Q3.1: no condition differs from it
    in the surgery alone."""
    study = study_of(ROOT / "configs" / "refiner_skip.yaml")
    study.conditions = [
        ConditionSpec(name="default"),
        ConditionSpec(name="skip", surgery=[{"variant": "skip"}], encoding={"hidden_layer": -1}),
    ]
    q31 = answers_of(write_run(study, tmp_path / "run"))["Q3.1"]
    assert q31.pairs == [] and "no condition that differs from it only in surgery" in q31.lines[0]


@pytest.mark.slow  # one predict run of 2 images on the embedded tiny model
def test_a_real_predict_run_with_swapped_names(tmp_path):
    """refiner_skip.yaml with its two names swapped: "default" now skips the refiner, "skip" is the control."""
    from llm_dit.cli import cli_main

    cli_main([
        "predict", "--config", str(ROOT / "configs" / "refiner_skip.yaml"),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--data.init_args.max_prompts", "1", "--data.init_args.max_seeds", "1",
        "--data.init_args.study.conditions", '[{"name": "skip"}, {"name": "default", "surgery": [{"variant": "skip"}]}]',
        "--data.init_args.study.control", "skip",
    ])  # fmt: skip
    folder = tmp_path / "lightning_logs" / "refiner_skip"
    text = write_report(folder, n_boot=100, image_change=False, figures_png=False).read_text()
    answers = answers_of(folder)
    assert answers["Q3.1"].answerable and answers["Q3.1"].pairs == [("default", "skip")]
    check_expected(answers, {"Q3.1": {("default", "skip")}})
    assert "default vs skip: surgery=[skip(context_refiner)] vs []" in text
