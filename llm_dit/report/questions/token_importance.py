"""Study 6, token importance and position: Q6.1-Q6.5."""

from __future__ import annotations

from llm_dit.report.questions.base import Answer, Context, Question, vs_control


def q6_1(ctx: Context) -> Answer:
    a = Answer("Q6.1", "Does shuffling destroy semantic meaning or just reduce quality?")
    cond = ctx.find("shuffle_all")
    if cond is None:
        return ctx.missing(a, "shuffle_all")
    a.lines += ctx.compare(cond)
    a.lines.append("meaning lost = clip_score (vs the original prompt) drops; quality lost = detail_score drops.")
    return a


def q6_2(ctx: Context) -> Answer:
    a = Answer("Q6.2", "Are nouns more important than adjectives?")
    nouns, adjectives = ctx.find("remove_nouns"), ctx.find("remove_adjectives")
    if nouns is None or adjectives is None:
        return ctx.missing(a, "remove_nouns", "remove_adjectives")
    a.lines += ctx.compare(nouns) + ctx.compare(adjectives)
    a.lines += ctx.compare(nouns, against=adjectives)
    a.lines.append("nouns matter more if removing them lowers clip_score more than removing adjectives.")
    return a


def q6_5(ctx: Context) -> Answer:
    a = Answer("Q6.5", "Is there a 'sweet spot' position for key concepts?")
    conds = [c for c in (ctx.find("front_load"), ctx.run.control, ctx.find("back_load")) if c]
    if len(conds) < 2 or ctx.quality is None:
        return ctx.missing(a, "front_load", "back_load")
    a.lines += ctx.table(ctx.quality, conds)
    a.lines.append("three positions only bound the answer; more positions need a dedicated position sweep.")
    a.needs_human = "whether the key concept is visibly present at each position."
    return a


QUESTIONS: list[Question] = [
    q6_1,
    q6_2,
    vs_control("Q6.3", "Does token position affect its influence on the image?", ("front_load", "back_load")),
    vs_control(
        "Q6.4",
        "Does duplicating a word increase its presence in the image?",
        ("duplicate",),
        "presence of the duplicated concept (or per-concept probes in metadata.elements).",
    ),
    q6_5,
]
