"""Study 7, system prompt: Q7.1-Q7.5."""

from __future__ import annotations

from llm_dit.report.questions.base import (
    Answer,
    Context,
    Question,
    probe_metrics,
    token_column,
    type_filter,
    vs_control,
)

PHOTO_TYPES = ("photo", "portrait", "landscape", "realistic")
ART_TYPES = ("art", "paint", "illustration", "abstract", "drawing", "anime")


def q7_1(ctx: Context) -> Answer:
    a = Answer("Q7.1", "Does removing the system prompt save tokens without quality loss?")
    none, default = ctx.find("none", "no_system"), ctx.find("default")
    default = default or ctx.run.control
    if none is None or default is None or none == default:
        return ctx.missing(a, "none", "default")
    tokens = token_column(ctx)
    a.lines += ctx.compare(none, against=default, metrics=ctx.main_metrics() + ([tokens] if tokens else []))
    return a


def _role(qid: str, question: str, name: str, types: tuple[str, ...], probes: tuple[str, ...]) -> Question:
    def answer(ctx: Context) -> Answer:
        a = Answer(qid, question, needs_human="style quality is a judgement; A/B the role against the control.")
        cond = ctx.find(name)
        if cond is None:
            return ctx.missing(a, name)
        where = type_filter(*types)
        subset = any(where(r) for r in ctx.run.rows)
        a.lines.append(
            f"on prompts of type {'/'.join(types)}" if subset else "no prompt of a matching type: all prompts"
        )
        a.lines += ctx.compare(
            cond, metrics=ctx.main_metrics() + probe_metrics(ctx, *probes), where=where if subset else None
        )
        return a

    return answer


def q7_4(ctx: Context) -> Answer:
    a = Answer("Q7.4", "Is there a quality ceiling regardless of system prompt?")
    if ctx.quality is None:
        a.answerable = False
        return a
    means = {c: ctx.mean(ctx.quality, c) for c in ctx.run.conditions}
    means = {c: e for c, e in means.items() if e.n}
    best = max(means, key=lambda c: means[c].mean)
    clear = [c for c, e in means.items() if c != best and e.high < means[best].low]
    spread = max(e.mean for e in means.values()) - min(e.mean for e in means.values())
    a.lines.append(
        f"spread of `{ctx.quality}` means across system prompts: {spread:.4g}; best {best} {means[best].format()}"
    )
    a.lines.append(f"conditions clearly below the best: {', '.join(clear) or 'none (a ceiling: the CIs overlap)'}")
    return a


QUESTIONS: list[Question] = [
    q7_1,
    _role(
        "Q7.2",
        "Does a 'photographer' system prompt improve photo-style images?",
        "photographer",
        PHOTO_TYPES,
        ("photo",),
    ),
    _role(
        "Q7.3",
        "Does an 'artist' system prompt improve artistic renders?",
        "artist",
        ART_TYPES,
        ("art", "paint", "illustration"),
    ),
    q7_4,
    vs_control("Q7.5", "Does a contradictory system prompt have any negative effect?", ("contradictory",)),
]
