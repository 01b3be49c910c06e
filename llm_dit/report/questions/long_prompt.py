"""Study 5, long-prompt compression modes: Q5.1-Q5.6."""

from __future__ import annotations

import numpy as np

from llm_dit.report.questions.base import Answer, Context, Question
from llm_dit.results.run_data import meta, value_of
from llm_dit.results.stats import unpaired_difference
from llm_dit.results.tables import compression_curves, compression_mode, compression_ratio

MODE = ("encoding.long_prompt_mode",)


def q5_1(ctx: Context) -> Answer:
    a = Answer("Q5.1", "At what compression ratio does quality noticeably degrade?")
    if ctx.quality is None:
        a.answerable = False
        return a
    for cond in ctx.run.conditions:
        by_ratio: dict[float, dict[tuple[int, int], float]] = {}
        for row in ctx.run.rows_of(cond):
            value, ratio = value_of(row, ctx.quality), compression_ratio(row)
            if value is not None and ratio is not None:
                by_ratio.setdefault(round(ratio, 3), {})[(int(row["prompt_index"]), int(row["seed"]))] = value
        if len(by_ratio) < 2:
            continue
        ratios = sorted(by_ratio)
        first = ratios[0]
        degrade = next(
            (
                r
                for r in ratios[1:]
                if (d := unpaired_difference(by_ratio[r], by_ratio[first], ctx.n_boot, ctx.seed)).excludes_zero and d.mean < 0
            ),
            None,
        )
        base = float(np.mean(list(by_ratio[first].values())))
        a.lines.append(
            f"{compression_mode(ctx.run, cond)}: `{ctx.quality}` {base:.4g} at ratio {first:g}; first ratio clearly "
            "below that (cluster-bootstrap CI of the difference < 0; different prompts, unpaired): "
            + (f"{degrade:g}" if degrade is not None else "none tested")
        )
    if not a.lines:
        a.answerable = False
        a.lines.append("prompts carry no metadata.target_tokens at several lengths")
    return a


def _elements_vs(qid: str, question: str, mode: str, against: str | None = None, human: str | None = None) -> Question:
    """Conditions in long_prompt_mode ``mode`` against those in mode ``against`` (or every other
    mode), each pair differing only in the mode, on element, prompt and detail scores."""

    def answer(ctx: Context) -> Answer:
        a = Answer(qid, question, needs_human=human)
        found = ctx.select(lambda s: s.long_prompt_mode == mode)
        others = ctx.select(lambda s: s.long_prompt_mode != mode and (against is None or s.long_prompt_mode == against))
        if not found or not others:
            wanted = f"in long_prompt_mode {mode!r}" + (f" and one in {against!r}" if against else " and one in another mode")
            return ctx.missing(a, wanted)
        metrics = [
            m for m in (ctx.metric("clip_elements_mean"), ctx.metric("clip_score"), ctx.metric("detail_score")) if m
        ]
        for cond in found:
            for other in others:
                if ctx.settings(cond).differences(ctx.settings(other)) <= set(MODE):
                    ctx.compare(a, cond, against=other, metrics=metrics)
        if not a.lines:
            return ctx.missing(a, f"in another mode with otherwise equal settings to compare with {mode!r}")
        return a

    return answer


def q5_4(ctx: Context) -> Answer:
    a = Answer("Q5.4", "Does back-heavy content get preserved with any mode?")
    where = lambda r: meta(r, "construction") == "back_heavy"  # noqa: E731
    metric = ctx.metric("clip_elements_mean")
    if metric is None or not any(where(r) for r in ctx.run.rows):
        a.answerable = False
        a.lines.append("needs back_heavy prompts with metadata.elements and per-element CLIP scores")
        return a
    front = lambda r: meta(r, "construction") == "front_heavy"  # noqa: E731
    for cond in ctx.run.conditions:
        back, fr = ctx.mean(metric, cond, where), ctx.mean(metric, cond, front)
        a.lines.append(
            f"{compression_mode(ctx.run, cond)}: `{metric}` back_heavy {back.format()}, front_heavy {fr.format()}"
        )
    return a


def q5_5(ctx: Context) -> Answer:
    a = Answer("Q5.5", "Is there a mode that works best for structured prompts (lists, JSON)?")

    def where(row: dict) -> bool:
        label = str(meta(row, "construction") or row.get("prompt_type") or "").lower()
        return any(word in label for word in ("struct", "list", "json"))

    if not any(where(r) for r in ctx.run.rows) or ctx.quality is None:
        a.answerable = False
        a.lines.append(
            "this run has no structured prompts (prompt_type or construction 'structured' / 'list' / 'json')"
        )
        return a
    ctx.table(a, ctx.quality, ctx.run.conditions, where)
    return a


def q5_6(ctx: Context) -> Answer:
    a = Answer("Q5.6", "What is the quality vs compression ratio curve for each mode?")
    if ctx.quality is None:
        a.answerable = False
        return a
    curves = compression_curves(ctx.run, ctx.quality, n_boot=ctx.n_boot, seed=ctx.seed)
    if not curves:
        a.answerable = False
        a.lines.append("prompts carry no metadata.target_tokens")
        return a
    for mode, points in curves.items():
        a.lines.append(f"{mode}: " + "; ".join(f"ratio {r:g}: {m:.4g} [{lo:.4g}, {hi:.4g}]" for r, m, lo, hi in points))
    a.lines.append(f"figure: figures/compression_{ctx.quality}.png")
    return a


QUESTIONS: list[Question] = [
    q5_1,
    _elements_vs("Q5.2", "Does attention_pool better preserve 'important' tokens?", "attention_pool"),
    _elements_vs(
        "Q5.3",
        "Is interpolate smoother than pool visually?",
        "interpolate",
        "pool",
        "visual smoothness (detail_score only says which has more high-frequency content).",
    ),
    q5_4,
    q5_5,
    q5_6,
]
