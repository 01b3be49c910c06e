"""Study 1, hidden layer: Q1.1-Q1.5."""

from __future__ import annotations

import numpy as np

from llm_dit.report.questions.base import Answer, Context, Question, type_is
from llm_dit.results.settings import DEFAULT_HIDDEN_LAYER

LAYER_KEYS = ("encoding.hidden_layer", "encoding.layer_combine")


def q1_1(ctx: Context) -> Answer:
    a = Answer("Q1.1", "Does layer -1 (final) produce sharper or more abstract images?")
    found = ctx.select(lambda s: s.hidden_layer == -1)
    if not found:
        return ctx.missing(a, "with encoding.hidden_layer = -1")
    metrics = [m for m in (ctx.metric("detail_score"), ctx.metric("clip_score")) if m]
    for cond in found:
        against = ctx.reference(cond, LAYER_KEYS, lambda s: s.hidden_layer == DEFAULT_HIDDEN_LAYER)
        if against is None:
            a.lines.append(f"{cond}: no condition at hidden_layer {DEFAULT_HIDDEN_LAYER} with otherwise equal settings")
            continue
        ctx.compare(a, cond, against, metrics=metrics)
    a.lines.append(
        "sharper = higher detail_score; a lower CLIP score at equal sharpness hints at more abstract images."
    )
    a.needs_human = "'abstract' is a judgement: compare layer -1 with the control blind."
    return a


def q1_2(ctx: Context) -> Answer:
    a = Answer("Q1.2", "Is there a layer that better preserves compositional structure ('cat ON couch')?")
    if ctx.quality:
        ctx.table(a, ctx.quality, ctx.run.conditions)
    a.lines.append("CLIP scores behave like bag-of-words on relations; they rank layers only coarsely here.")
    a.needs_human = "relations (on / under / left of) need people or a VQA model checking each relation."
    return a


def q1_3(ctx: Context) -> Answer:
    a = Answer("Q1.3", "Do certain prompt types prefer different layers?")
    types = sorted({str(r["prompt_type"]) for r in ctx.run.rows if r.get("prompt_type")})
    if not types or not ctx.quality:
        a.answerable = False
        a.lines.append("prompts carry no type (set prompts[].type) or no quality metric was computed")
        return a
    for prompt_type in types:
        where = type_is(prompt_type)
        means = {c: ctx.mean(ctx.quality, c, where) for c in ctx.run.conditions}
        means = {c: e for c, e in means.items() if e.n}
        if not means:
            continue
        best = max(means, key=lambda c: means[c].mean)
        overlap = [c for c, e in means.items() if c != best and e.high >= means[best].low]
        a.lines.append(
            f"{prompt_type}: best `{ctx.quality}` under {best} = {means[best].format()}; "
            + (f"CIs overlap with {', '.join(overlap)}" if overlap else "CI clear of every other condition")
        )
    a.lines.append("heatmap: figures/heatmap_prompt_type_*.png")
    return a


def q1_4(ctx: Context) -> Answer:
    a = Answer("Q1.4", "What is the cosine similarity between embeddings from different layers?")
    cosine = ctx.run.analysis.get("cosine_matrix") or {}
    names, matrix = cosine.get("names"), cosine.get("matrix")
    if not names or not matrix:
        a.answerable = False
        a.lines.append("embedding_analysis.json with a cosine_matrix is not in the run directory")
        return a
    m = np.asarray(matrix, dtype=float)  # None (no shared prompts) -> NaN
    for i, name in enumerate(names):
        others = ", ".join(f"{names[j]}: {m[i, j]:.3f}" for j in range(len(names)) if j != i and np.isfinite(m[i, j]))
        a.lines.append(f"{name} vs {others or '(no comparable condition)'}")
    a.lines.append("figure: figures/cosine_matrix.png")
    return a


def q1_5(ctx: Context) -> Answer:
    a = Answer("Q1.5", "Does combining layers (e.g. average of -1 and -2) improve results?")
    mixes = ctx.select(lambda s: s.is_layer_mix)
    if not mixes:
        return ctx.missing(a, "with a layer mix (encoding.hidden_layer a list of layers or 'all')")
    for cond in mixes:
        against = ctx.reference(cond, LAYER_KEYS, lambda s: not s.is_layer_mix)
        if against is None:
            a.lines.append(f"{cond}: no single-layer condition with otherwise equal settings")
            continue
        ctx.compare(a, cond, against)
    return a


QUESTIONS: list[Question] = [q1_1, q1_2, q1_3, q1_4, q1_5]
