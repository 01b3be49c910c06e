"""Study 1, hidden layer: Q1.1-Q1.5."""

from __future__ import annotations

import numpy as np

from llm_dit.report.questions.base import Answer, Context, Question, type_is


def _layer(ctx: Context, value: object) -> str | None:
    found = ctx.find_by(lambda name, v: v.get("hidden_layer") == value)
    return found[0] if found else None


def q1_1(ctx: Context) -> Answer:
    a = Answer("Q1.1", "Does layer -1 (final) produce sharper or more abstract images?")
    cond = _layer(ctx, -1) or ctx.find("layer=-1", "hidden_layer=-1")
    if cond is None:
        return ctx.missing(a, "hidden_layer=-1")
    a.lines += ctx.compare(cond, metrics=[m for m in (ctx.metric("detail_score"), ctx.metric("clip_score")) if m])
    a.lines.append(
        "sharper = higher detail_score; a lower CLIP score at equal sharpness hints at more abstract images."
    )
    a.needs_human = "'abstract' is a judgement: compare layer -1 with the control blind."
    return a


def q1_2(ctx: Context) -> Answer:
    a = Answer("Q1.2", "Is there a layer that better preserves compositional structure ('cat ON couch')?")
    if ctx.quality:
        a.lines += ctx.table(ctx.quality, ctx.run.conditions)
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
    mixes = ctx.find_by(lambda n, v: isinstance(v.get("hidden_layer"), (list, tuple)) or v.get("hidden_layer") == "all")
    mixes += [
        c
        for c in ctx.run.conditions
        if any(w in c.lower() for w in ("mix", "avg", "mean", "combine")) and c not in mixes
    ]
    if not mixes:
        return ctx.missing(a, "hidden_layer=[-1, -2]", "mix")
    for cond in mixes:
        a.lines += ctx.compare(cond)
    return a


QUESTIONS: list[Question] = [q1_1, q1_2, q1_3, q1_4, q1_5]
