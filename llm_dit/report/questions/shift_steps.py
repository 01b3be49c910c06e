"""Study 4, scheduler shift x steps: Q4.1-Q4.5."""

from __future__ import annotations

import numpy as np

from callbacks.figures import pareto_front
from llm_dit.report.questions.base import Answer, Context, Question, fmt
from llm_dit.report.questions.hidden_layer import q1_3
from llm_dit.report.stats import unpaired_difference
from llm_dit.report.tables import condition_quality, condition_seconds, pareto_points


def q4_1(ctx: Context) -> Answer:
    a = Answer("Q4.1", "What is the quality-speed Pareto frontier?")
    points = pareto_points(ctx.run)
    if points is None:
        a.answerable = False
        a.lines.append("needs several (shift, steps) conditions with seconds and a quality metric")
        return a
    shifts, steps, secs, quals, metric, higher = points
    front = pareto_front(secs, quals, higher)
    a.lines.append(f"quality = `{metric}` ({'higher' if higher else 'lower'} is better), cost = seconds per image")
    for i in front:
        a.lines.append(f"Pareto point: shift={shifts[i]:g}, steps={steps[i]}: {secs[i]:.3g} s, {metric} {quals[i]:.4g}")
    a.lines.append("figure: figures/pareto_shift_steps.png")
    return a


def _by_setting(ctx: Context, key: str, value: float) -> list[str]:
    return [
        c for c in ctx.run.conditions if ctx.run.setting(c, key) is not None and float(ctx.run.setting(c, key)) == value
    ]


def q4_2(ctx: Context) -> Answer:
    a = Answer("Q4.2", "Does shift=1.0 (no shift) work with more steps?")
    conds = sorted(_by_setting(ctx, "shift", 1.0), key=lambda c: int(ctx.run.setting(c, "steps") or 0))
    if not conds or ctx.quality is None:
        return ctx.missing(a, "shift=1.0")
    a.lines += ctx.table(ctx.quality, conds)
    for cond in conds:
        a.lines += ctx.compare(cond, metrics=[ctx.quality])
    fid = condition_quality(ctx.run)
    if fid and fid[0].startswith("fid"):
        a.lines.append("FID at shift=1.0: " + ", ".join(f"{c}: {fmt(fid[1].get(c))}" for c in conds))
    return a


def q4_3(ctx: Context) -> Answer:
    a = Answer("Q4.3", "Is there diminishing returns beyond shift=3.0?")
    if ctx.quality is None:
        a.answerable = False
        return a
    shifts = sorted({float(s) for c in ctx.run.conditions if (s := ctx.run.setting(c, "shift")) is not None})
    if len(shifts) < 2:
        return ctx.missing(a, "several shifts")
    previous = None
    for shift in shifts:
        values = [v for c in _by_setting(ctx, "shift", shift) for v in ctx.run.cells(ctx.quality, c).values()]
        line = f"shift={shift:g}: mean `{ctx.quality}` {fmt(float(np.mean(values)) if values else None)} over all steps"
        if previous is not None and values:
            step = unpaired_difference(values, previous, ctx.n_boot, ctx.seed)
            line += f"; change from the previous shift {step.format(signed=True)}"
        a.lines.append(line)
        previous = values or previous
    return a


def q4_4(ctx: Context) -> Answer:
    a = Answer("Q4.4", "Do different shift values favor different content types?")
    a.lines += q1_3(ctx).lines
    return a


def q4_5(ctx: Context) -> Answer:
    a = Answer("Q4.5", "What shift-step combination minimizes FID?")
    quality = condition_quality(ctx.run)
    if quality is None or not quality[0].startswith("fid"):
        a.answerable = False
        a.lines.append("FID was not computed: configure FidCallback(reference_dir=..., weights=...)")
        return a
    metric, values, _ = quality
    best = min(values, key=values.get)
    a.lines.append(
        f"lowest `{metric}`: {best} = {fmt(values[best])}; "
        f"seconds per image {fmt(condition_seconds(ctx.run).get(best))}"
    )
    a.lines.append(
        "ranking: " + ", ".join(f"{c} {fmt(v)}" for c, v in sorted(values.items(), key=lambda kv: kv[1])[:10])
    )
    return a


QUESTIONS: list[Question] = [q4_1, q4_2, q4_3, q4_4, q4_5]
