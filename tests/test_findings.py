"""The findings builder (llm_dit.report.findings) on hand-built run folders, against oracles written here.

The oracle for a mean and a paired difference is numpy on the hand-built values; the oracle for an
interval is a separate nested bootstrap (plain loops, Python's own RNG: prompts with replacement, then
seeds within each drawn prompt), which must agree with the builder's within Monte Carlo error, and an
exact case (every paired difference equal, so the interval is that value on both ends). The grid's
cells are compared pixel for pixel with the PNGs they show.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llm_dit.report import write_report
from llm_dit.report.findings import GRID_CELL, LABEL_WIDTH, grid_prompts, study_finding, write_findings
from llm_dit.results.run_data import load_run

ROOT = Path(__file__).resolve().parents[1]
PROMPTS, SEEDS = 10, [3, 7, 11, 19]
CONDITIONS = ["control", "worse", "better", "shifted"]


def values_of(condition: str, prompt: int, seed: int) -> float:
    """Hand-made scores: a prompt effect, seed noise, and a condition effect that varies by prompt."""
    rng = np.random.default_rng([prompt, seed])
    base = 0.3 + 0.04 * prompt + 0.1 * rng.random()
    if condition == "worse":
        return base - 0.2 - 0.05 * (prompt % 3)
    if condition == "better":
        return base + 0.1 + 0.03 * ((prompt * seed) % 4)
    if condition == "shifted":
        return base + 0.05  # every paired difference exactly +0.05
    return base


def pixel(condition: str, prompt: int, seed: int) -> tuple[int, int, int]:
    return (CONDITIONS.index(condition) * 60, prompt * 20, seed * 10)


def write_run(folder: Path, name: str = "synthetic", weights: str = "tiny-random") -> Path:
    rows = []
    for c_index, condition in enumerate(CONDITIONS):
        for prompt in range(PROMPTS):
            for seed in SEEDS:
                image = f"images/{condition}/p{prompt:03d}_s{seed}.png"
                (folder / image).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (16, 16), pixel(condition, prompt, seed)).save(folder / image)
                rows.append({
                    "item_id": f"{condition}/p{prompt:03d}_s{seed}", "study": name, "condition": condition,
                    "condition_index": c_index, "prompt_index": prompt, "seed": seed, "prompt": f"prompt {prompt}",
                    "original_prompt": f"prompt {prompt}", "image": image,
                    "metric.world_all": values_of(condition, prompt, seed),
                })
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    study = {"name": name, "kind": "custom", "control": "control", "conditions": [{"name": c} for c in CONDITIONS]}
    (folder / "study.json").write_text(json.dumps(study))
    (folder / "environment.json").write_text(json.dumps({"weights": weights, "transformer_fingerprint": "ab" * 8}))
    chance = {"world_all": {"kind": "item_mean", "conditions": {}, "info": {"chance": 0.0123}}}
    (folder / "set_metrics.json").write_text(json.dumps(chance))
    return folder


def oracle_interval(diffs: dict[tuple[int, int], float], n_boot: int = 4000, seed: int = 1) -> tuple[float, float]:
    """Nested bootstrap with loops: prompts with replacement, then seeds within each drawn prompt."""
    by_prompt: dict[int, list[float]] = {}
    for (prompt, _), value in diffs.items():
        by_prompt.setdefault(prompt, []).append(value)
    groups = list(by_prompt.values())
    rng = random.Random(seed)
    means = []
    for _ in range(n_boot):
        drawn = [groups[rng.randrange(len(groups))] for _ in groups]
        picked = [g[rng.randrange(len(g))] for g in drawn for _ in g]
        means.append(sum(picked) / len(picked))
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def cells(condition: str) -> dict[tuple[int, int], float]:
    return {(p, s): values_of(condition, p, s) for p in range(PROMPTS) for s in SEEDS}


def test_control_best_worst_and_intervals_match_the_oracles(tmp_path):
    finding = study_finding(load_run(write_run(tmp_path / "run")), n_boot=4000)
    control = cells("control")
    assert finding.control.condition == "control"
    assert finding.control.estimate.mean == pytest.approx(np.mean(list(control.values())))
    assert (finding.control.estimate.n, finding.control.estimate.clusters) == (PROMPTS * len(SEEDS), PROMPTS)
    deltas = {c: {k: v - control[k] for k, v in cells(c).items()} for c in CONDITIONS[1:]}
    means = {c: np.mean(list(d.values())) for c, d in deltas.items()}
    assert finding.best.condition == max(means, key=means.get) == "better"
    assert finding.worst.condition == min(means, key=means.get) == "worse"
    for row in (finding.best, finding.worst):
        assert row.difference.mean == pytest.approx(means[row.condition])
        low, high = oracle_interval(deltas[row.condition])
        width = high - low
        assert abs(row.difference.low - low) < 0.1 * width and abs(row.difference.high - high) < 0.1 * width
        assert row.difference.excludes_zero  # both effects are far from 0 at this spread
    low, high = oracle_interval(cells("control"))
    width = high - low
    assert abs(finding.control.estimate.low - low) < 0.1 * width and abs(finding.control.estimate.high - high) < 0.1 * width
    assert finding.chance == 0.0123 and (finding.images, finding.prompts, finding.seeds) == (160, PROMPTS, len(SEEDS))


def test_a_constant_difference_has_a_point_interval(tmp_path):
    """Every paired difference +0.05: any resample's mean is 0.05, so the interval is [0.05, 0.05]."""
    folder = write_run(tmp_path / "run")
    kept = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    kept = [r for r in kept if r["condition"] in ("control", "shifted")]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    finding = study_finding(load_run(folder), n_boot=500)
    assert finding.best.condition == finding.worst.condition == "shifted"
    assert finding.best.difference.mean == pytest.approx(0.05)
    assert finding.best.difference.low == pytest.approx(0.05) and finding.best.difference.high == pytest.approx(0.05)


def test_markdown_rows_say_what_the_report_says(tmp_path):
    """The table's numbers are the report's: the same Δ strings appear in report.md for the same seed."""
    run = write_run(tmp_path / "run")
    out = write_findings([run], tmp_path / "findings" / "findings.md", n_boot=300, seed=5)
    text = out.read_text()
    (row,) = [line for line in text.splitlines() if line.startswith("| synthetic |")]
    finding = study_finding(load_run(run), n_boot=300, seed=5)
    best, worst = finding.best.difference.format(signed=True), finding.worst.difference.format(signed=True)
    assert f"better: {best} *" in row and f"worse: {worst} *" in row
    assert f"control: {finding.control.estimate.format()}" in row and "160 (10 × 4)" in row and "0.0123" in row
    assert "[grid](grids/synthetic.png)" in row
    assert "Random weights" in text and "tiny-random" in text
    report = write_report(run, n_boot=300, seed=5, image_change=False, figures_png=False).read_text()
    assert f"| better | 40 | 10 | {finding.best.estimate.format()} | {best} * |" in report
    assert f"| worse | 40 | 10 | {finding.worst.estimate.format()} | {worst} * |" in report


def test_the_grid_shows_control_best_worst_at_spread_prompts(tmp_path):
    run = write_run(tmp_path / "run")
    out = write_findings([run], tmp_path / "out" / "findings.md", n_boot=100)
    grid = Image.open(tmp_path / "out" / "grids" / "synthetic.png").convert("RGB")
    prompts = grid_prompts(range(PROMPTS))
    assert prompts == [0, 2, 4, 5, 7, 9]  # round(linspace(0, 9, 6))
    pad = 4
    for row, condition in enumerate(["control", "better", "worse"]):
        for column, prompt in enumerate(prompts):
            x = LABEL_WIDTH + pad + column * (GRID_CELL + pad) + GRID_CELL // 2
            y = pad + row * (GRID_CELL + pad) + GRID_CELL // 2
            assert grid.getpixel((x, y)) == pixel(condition, prompt, min(SEEDS)), (condition, prompt)
    assert out.is_file()


def test_ties_show_the_first_as_best_and_the_last_as_worst(tmp_path):
    """Conditions with equal means (all +0.05) are not one condition shown twice."""
    folder = write_run(tmp_path / "run")
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    for row in rows:
        if row["condition"] != "control":
            row["metric.world_all"] = values_of("shifted", row["prompt_index"], row["seed"])
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    finding = study_finding(load_run(folder), n_boot=100)
    assert (finding.best.condition, finding.worst.condition) == ("worse", "shifted")


def test_grid_prompts_spread_evenly():
    assert grid_prompts(range(20)) == [0, 4, 8, 11, 15, 19]
    assert grid_prompts([5, 1, 3]) == [1, 3, 5]


def test_two_runs_of_one_study_keep_both_grids_and_no_runs_is_an_error(tmp_path):
    first, second = write_run(tmp_path / "a"), write_run(tmp_path / "b")
    text = write_findings([first, second], tmp_path / "f.md", n_boot=50).read_text()
    assert "grids/synthetic.png" in text and "grids/synthetic_2.png" in text
    with pytest.raises(ValueError, match="no run folders"):
        write_findings([], tmp_path / "g.md")


def test_the_command_line_writes_the_table(tmp_path, capsys):
    from llm_dit.report.findings import main

    main([str(write_run(tmp_path / "run")), "--out", str(tmp_path / "o" / "f.md"), "--n-boot", "50"])
    assert "findings: " in capsys.readouterr().out
    assert re.search(r"^\| synthetic \| 160 ", (tmp_path / "o" / "f.md").read_text(), re.M)
    main([str(tmp_path / "run"), "--out", str(tmp_path / "docs" / "findings" / "f.md"), "--n-boot", "50",
          "--links-relative-to", str(tmp_path)])  # links for a README at tmp_path
    text = (tmp_path / "docs" / "findings" / "f.md").read_text()
    assert "[grid](docs/findings/grids/synthetic.png)" in text
    assert (tmp_path / "docs" / "findings" / "grids" / "synthetic.png").is_file()


def test_world_long_placement_prompts_are_the_generators():
    """configs/prompts/world_long_placement.txt = world_long.txt's prompts typed by their placement."""
    from llm_dit.study import load_prompts_file
    from llm_dit.world.prompt_sets import prompt_set

    prompts = load_prompts_file(ROOT / "configs" / "prompts" / "world_long_placement.txt")
    expected = prompt_set("long")
    assert [p.text for p in prompts] == expected
    assert [p.text for p in load_prompts_file(ROOT / "configs" / "prompts" / "world_long.txt")] == expected
    assert [p.type for p in prompts] == [("front", "back", "distributed", "repeated")[i % 4] for i in range(len(expected))]
