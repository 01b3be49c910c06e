"""The README's "What the studies find on the embedded model": one row per study, from its run folder.

Every number comes from the report's own comparison (``llm_dit.results.tables.condition_table``:
mean with a cluster-bootstrap interval over prompts, seeds nested, and the paired difference to
the control), so the table says what each study's report.md says. Per study:

* the control's scene score (``world_all`` by default: the share of images where every fact of the
  prompt holds) with its interval, and the chance level the scene-score callback recorded;
* the best and the worst other condition by their paired difference to the control (higher is
  better for the world's scores: a fact holds or it does not), with that difference's interval,
  starred when it excludes 0, as in the report;
* a picture grid (``grids/<study>.png`` next to the markdown): one row per condition shown
  (control, best, worst), one column per prompt at the first seed; prompts are spread evenly over
  the study's prompt list (indices ``linspace(0, P - 1, columns)``), never picked by their scores.

    python -m llm_dit.report.findings RUN_DIR [RUN_DIR ...] --out findings/findings.md
    # for the README: grids inside the checkout, links from its root
    python -m llm_dit.report.findings RUN_DIR ... --out docs/findings/findings.md --links-relative-to .

Run folders are what ``predict`` writes (results.jsonl, study.json, set_metrics.json, images/).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from llm_dit.report.provenance import describe_source, weights_are_random
from llm_dit.results.run_data import RunData, load_run
from llm_dit.results.stats import UNIT, Estimate
from llm_dit.results.tables import ConditionRow, condition_table

METRIC = "world_all"
GRID_COLUMNS = 6
GRID_CELL = 96  # pixels per image in the grid (64 px images are scaled up, nearest neighbour)
LABEL_WIDTH = 150


@dataclass(frozen=True)
class StudyFinding:
    """What one study's run says about ``metric``.

    Attributes:
        control: the control's row (estimate; no difference).
        best / worst: the other conditions with the highest / lowest mean paired difference to the
            control (ties: the first / the last in the study's order; the same condition when there is
            only one; None when there is none).
        chance: the metric's chance level from set_metrics.json (None when not recorded).
        grid: the picture grid written for this study (None when the run has no images).
    """

    study: str
    kind: str
    run_dir: Path
    metric: str
    images: int
    prompts: int
    seeds: int
    weights: str | None
    source: str
    control: ConditionRow | None
    best: ConditionRow | None
    worst: ConditionRow | None
    chance: float | None
    grid: Path | None = None


def study_finding(run: RunData, metric: str = METRIC, n_boot: int = 2000, seed: int = 0) -> StudyFinding:
    """The finding of one run: the report's condition table for ``metric``, reduced to control, best, worst."""
    rows = condition_table(run, metric, n_boot, seed)
    control = next((r for r in rows if r.condition == run.control and r.difference is None), None)
    others = [r for r in rows if r.difference is not None and r.difference.n > 0]
    # Ties go by the study's order: best is the first of equal means, worst the last (so a study whose
    # conditions all tie shows two of them, not one twice).
    best = max(others, key=lambda r: r.difference.mean) if others else None
    worst = min(reversed(others), key=lambda r: r.difference.mean) if others else None
    info = (run.set_metrics.get(metric) or {}).get("info") or {}
    chance = info.get("chance")
    return StudyFinding(
        study=run.name,
        kind=run.kind,
        run_dir=Path(run.run_dir) if run.run_dir else Path("."),
        metric=metric,
        images=len(run.rows),
        prompts=len({r["prompt_index"] for r in run.rows}),
        seeds=len({r["seed"] for r in run.rows}),
        weights=run.environment.get("weights"),
        source=describe_source(run.environment),
        control=control,
        best=best,
        worst=worst,
        chance=float(chance) if isinstance(chance, (int, float)) else None,
    )


def grid_prompts(prompt_indices: Sequence[int], columns: int = GRID_COLUMNS) -> list[int]:
    """``columns`` prompt indices spread evenly over the sorted list (all of them when fewer)."""
    ordered = sorted(set(prompt_indices))
    if len(ordered) <= columns:
        return ordered
    picks = np.linspace(0, len(ordered) - 1, columns).round().astype(int)
    return [ordered[i] for i in dict.fromkeys(picks.tolist())]


def write_grid(run: RunData, conditions: Sequence[str], path: Path, columns: int = GRID_COLUMNS) -> Path | None:
    """A PNG: one row per condition (labelled), one column per prompt (first seed); None without images."""
    if not conditions or run.run_dir is None:
        return None
    first_seed = min(r["seed"] for r in run.rows)
    prompts = grid_prompts([r["prompt_index"] for r in run.rows], columns)
    image_of = {
        (r["condition"], r["prompt_index"]): Path(run.run_dir) / r["image"]
        for r in run.rows
        if r["seed"] == first_seed and r.get("image")
    }
    if not any((c, p) in image_of and image_of[(c, p)].is_file() for c in conditions for p in prompts):
        return None
    pad = 4
    canvas = Image.new(
        "RGB", (LABEL_WIDTH + len(prompts) * (GRID_CELL + pad) + pad, len(conditions) * (GRID_CELL + pad) + pad), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for row, condition in enumerate(conditions):
        top = pad + row * (GRID_CELL + pad)
        draw.text((pad, top + GRID_CELL // 2 - 6), condition[:24], fill="black")
        for column, prompt in enumerate(prompts):
            source = image_of.get((condition, prompt))
            if source is None or not source.is_file():
                continue  # a missing image stays white
            with Image.open(source) as image:
                cell = image.convert("RGB").resize((GRID_CELL, GRID_CELL), Image.NEAREST)
            canvas.paste(cell, (LABEL_WIDTH + pad + column * (GRID_CELL + pad), top))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def _estimate(estimate: Estimate | None, signed: bool = False) -> str:
    if estimate is None or estimate.n == 0 or not math.isfinite(estimate.mean):
        return "n/a"
    text = estimate.format(signed=signed)
    return text + " *" if signed and estimate.excludes_zero else text


def _condition(row: ConditionRow | None) -> str:
    return "—" if row is None else f"{row.condition}: {_estimate(row.difference, signed=True)}"


def markdown(findings: Sequence[StudyFinding], relative_to: Path, n_boot: int = 2000, seed: int = 0) -> str:
    """The findings table and its notes, with grid links relative to ``relative_to`` (a folder)."""
    metric = findings[0].metric if findings else METRIC
    lines = [
        f"| study | images (prompts × seeds) | control: `{metric}` [95% CI] | chance | best: Δ vs control [95% CI] "
        "| worst: Δ vs control [95% CI] | grid |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in findings:
        control = "n/a" if f.control is None else f"{f.control.condition}: {_estimate(f.control.estimate)}"
        chance = "n/a" if f.chance is None else f"{f.chance:.3g}"
        worst = "(one condition: as best)" if f.worst is not None and f.best is not None and f.worst.condition == f.best.condition else _condition(f.worst)
        grid = f"[grid]({Path(os.path.relpath(f.grid, relative_to)).as_posix()})" if f.grid else "—"
        lines.append(
            f"| {f.study} | {f.images} ({f.prompts} × {f.seeds}) | {control} | {chance} | {_condition(f.best)} | {worst} | {grid} |"
        )
    weights = sorted({str(f.weights) for f in findings})
    notes = [
        "",
        f"`{metric}`: share of images in which every fact of the prompt holds (the synthetic world's exact "
        "evaluator, callbacks.scene_score); higher is better. Intervals: " + UNIT + f" ({n_boot} resamples, seed {seed}); "
        "Δ is the paired difference to the control per (prompt, seed), * = its interval excludes 0 (as in each "
        "study's report.md). Best / worst: the other conditions with the highest / lowest mean Δ (ties: the first / the last in the study's order). Grids: rows = "
        "control, best, worst; columns = prompts spread evenly over the study's list, first seed.",
        "",
        "Weights: " + ", ".join(f"`{w}`" for w in weights) + ".",
    ]
    if any(weights_are_random(f.weights) for f in findings):
        notes.append("**Random weights: images are noise; these rows test the pipeline, not the model.**")
    runs = [f"- {f.study}: {f.source}, `{f.run_dir}`" for f in findings]
    return "\n".join(lines + notes + ["", "Runs:", *runs]) + "\n"


def write_findings(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    metric: str = METRIC,
    n_boot: int = 2000,
    seed: int = 0,
    links_relative_to: str | Path | None = None,
) -> Path:
    """Write ``out`` (markdown) and ``<out folder>/grids/<study>.png``; return ``out``'s path.

    Grid links are relative to ``links_relative_to`` (default: ``out``'s folder); for a table pasted
    into the README, write ``out`` under the checkout (e.g. docs/findings/) and pass its root.
    """
    if not run_dirs:
        raise ValueError("write_findings: no run folders given; pass the folders `predict` wrote (lightning_logs/<study>)")
    out = Path(out)
    findings: list[StudyFinding] = []
    for run_dir in run_dirs:
        run = load_run(run_dir)
        finding = study_finding(run, metric, n_boot, seed)
        shown = [r.condition for r in (finding.control, finding.best, finding.worst) if r is not None]
        same_name = sum(f.study == finding.study for f in findings)  # two runs of one study keep both grids
        name = finding.study if not same_name else f"{finding.study}_{same_name + 1}"
        grid = write_grid(run, list(dict.fromkeys(shown)), out.parent / "grids" / f"{name}.png")
        findings.append(replace(finding, grid=grid))
    out.parent.mkdir(parents=True, exist_ok=True)
    base = Path(links_relative_to) if links_relative_to is not None else out.parent
    out.write_text(markdown(findings, base, n_boot, seed), encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m llm_dit.report.findings",
        description="The README's findings table from the run folders of the studies.",
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run folders that `predict` wrote")
    parser.add_argument("--out", type=Path, default=Path("findings.md"), help="markdown file to write (grids go next to it)")
    parser.add_argument(
        "--links-relative-to", type=Path, default=None,
        help="folder the grid links are relative to (default: --out's folder; the checkout root for the README)",
    )
    parser.add_argument("--metric", default=METRIC, help="per-image metric to compare (default world_all)")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples per interval")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = parser.parse_args(argv)
    path = write_findings(args.run_dirs, args.out, args.metric, args.n_boot, args.seed, args.links_relative_to)
    print(f"findings: {path}")


if __name__ == "__main__":
    main()
