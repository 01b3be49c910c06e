"""Study 4, scheduler shift x steps: Q4.1-Q4.5."""

from __future__ import annotations

import numpy as np

from llm_dit.results.figures import pareto_front
from llm_dit.report.questions.base import Answer, Context, Question, fmt
from llm_dit.report.questions.hidden_layer import q1_3
from llm_dit.results.stats import paired_difference
from llm_dit.results.tables import condition_quality, condition_seconds, pareto_points

TIMING_NOTE = "seconds per image on this machine, warm-up batches left out (machine-dependent: compare within one run only)"


def q4_1(ctx: Context) -> Answer:
    a = Answer("Q4.1", "What is the quality-speed Pareto frontier?")
    points = pareto_points(ctx.run)
    if points is None:
        a.answerable = False
        a.lines.append("needs several (shift, steps) conditions with seconds and a quality metric")
        return a
    shifts, steps, secs, quals, metric, higher = points
    front = pareto_front(secs, quals, higher)
    a.lines.append(f"quality = `{metric}` ({'higher' if higher else 'lower'} is better), cost = {TIMING_NOTE}")
    for i in front:
        a.lines.append(f"Pareto point: shift={shifts[i]:g}, steps={steps[i]}: {secs[i]:.3g} s, {metric} {quals[i]:.4g}")
    a.lines.append("figure: figures/pareto_shift_steps.png")
    return a


def _sampler(ctx: Context, condition: str, key: str) -> float | None:
    value = ctx.settings(condition).sampler.get(key)
    return None if value is None else float(value)


def _by_setting(ctx: Context, key: str, value: float) -> list[str]:
    return ctx.select(lambda s: s.sampler.get(key) is not None and float(s.sampler[key]) == value)


def q4_2(ctx: Context) -> Answer:
    a = Answer("Q4.2", "Does shift=1.0 (no shift) work with more steps?")
    conds = sorted(_by_setting(ctx, "shift", 1.0), key=lambda c: _sampler(ctx, c, "steps") or 0)
    if not conds or ctx.quality is None:
        return ctx.missing(a, "with sampler.shift = 1.0 (and a quality metric)")
    ctx.table(a, ctx.quality, conds)
    control = ctx.run.control
    reference_shift = _sampler(ctx, control, "shift") if control else None
    for cond in conds:
        steps = _sampler(ctx, cond, "steps")
        against = ctx.reference(
            cond,
            ("sampler.shift",),
            lambda s: s.sampler.get("shift") is not None
            and float(s.sampler["shift"]) == reference_shift
            and float(s.sampler.get("steps", -1)) == steps,
        )
        if against is None:
            a.lines.append(f"{cond}: no condition at the control's shift ({reference_shift}) with the same steps")
            continue
        ctx.compare(a, cond, against, metrics=[ctx.quality])
    fid = condition_quality(ctx.run)
    if fid and fid[0].startswith("fid"):
        a.lines.append("FID at shift=1.0: " + ", ".join(f"{c}: {fmt(fid[1].get(c))}" for c in conds))
    return a


def q4_3(ctx: Context) -> Answer:
    a = Answer("Q4.3", "Is there diminishing returns beyond shift=3.0?")
    if ctx.quality is None:
        a.answerable = False
        return a
    shifts = sorted({s for c in ctx.run.conditions if (s := _sampler(ctx, c, "shift")) is not None})
    if len(shifts) < 2:
        return ctx.missing(a, "at a second sampler.shift")
    previous: tuple[float, dict[float, str]] | None = None
    for shift in shifts:
        by_steps = {_sampler(ctx, c, "steps"): c for c in _by_setting(ctx, "shift", shift)}
        cells = [v for c in by_steps.values() for v in ctx.run.cells(ctx.quality, c).values()]
        line = f"shift={shift:g}: mean `{ctx.quality}` {fmt(float(np.mean(cells)) if cells else None)} over all steps"
        if previous is not None and cells:
            step = _shift_step(ctx, by_steps, previous[1])
            line += (
                f"; change from shift={previous[0]:g} at equal steps {step.format(signed=True)} ({step.count()}, paired)"
                if step.n
                else "; no steps value shared with the previous shift"
            )
        a.lines.append(line)
        a.shown += list(by_steps.values())
        previous = (shift, by_steps) if cells else previous
    return a


def _shift_step(ctx: Context, now: dict, before: dict):
    """Mean over shared step counts of the paired (prompt, seed) difference between two shifts."""
    shared = [steps for steps in now if steps in before]
    diffs: dict[tuple[int, int], list[float]] = {}
    for steps in shared:
        a, b = ctx.run.cells(ctx.quality, now[steps]), ctx.run.cells(ctx.quality, before[steps])
        for key in a.keys() & b.keys():
            diffs.setdefault(key, []).append(a[key] - b[key])
    means = {key: float(np.mean(values)) for key, values in diffs.items()}
    return paired_difference(means, dict.fromkeys(means, 0.0), ctx.n_boot, ctx.seed)


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
        f"{fmt(condition_seconds(ctx.run).get(best))} seconds per image (machine-dependent)"
    )
    a.lines.append(
        "ranking: " + ", ".join(f"{c} {fmt(v)}" for c, v in sorted(values.items(), key=lambda kv: kv[1])[:10])
    )
    return a


QUESTIONS: list[Question] = [q4_1, q4_2, q4_3, q4_4, q4_5]
