"""Study 7, system prompt: Q7.1-Q7.5, conditions found by their recorded system prompt.

A system prompt's kind (none, a generic one, a photographer's, an artist's, a
contradictory one) is read from its text (questions/topics.py); each condition
is compared with one that differs from it only in the system prompt.
"""

from __future__ import annotations

from llm_dit.report.questions.base import (
    Answer,
    Context,
    Question,
    probe_metrics,
    token_column,
    type_filter,
)
from llm_dit.report.questions.topics import is_contradictory, system_roles
from llm_dit.results.settings import ConditionSettings

SYSTEM = ("encoding.system_prompt",)
PHOTO_TYPES = ("photo", "portrait", "landscape", "realistic")
ART_TYPES = ("art", "paint", "illustration", "abstract", "drawing", "anime")


def _none(settings: ConditionSettings) -> bool:
    return not settings.system_prompt.strip()


def _generic(settings: ConditionSettings) -> bool:
    """A system prompt that gives no role and asks for nothing bad ("You are a helpful assistant")."""
    text = settings.system_prompt
    return bool(text.strip()) and not system_roles(text) and not is_contradictory(text)


def _role(role: str):
    """The system prompt gives exactly this role (an artist-and-photographer prompt is neither)."""
    return lambda settings: system_roles(settings.system_prompt) == {role} and not is_contradictory(settings.system_prompt)


def _contradictory(settings: ConditionSettings) -> bool:
    return is_contradictory(settings.system_prompt)


def _quoted(ctx: Context, condition: str) -> str:
    text = ctx.settings(condition).system_prompt
    return f"{condition} system prompt: " + (repr(text[:80]) + ("…" if len(text) > 80 else "") if text else "none")


def _without_system_prompt(ctx: Context, a: Answer, cond: str) -> str | None:
    """The condition with `cond`'s settings but no system prompt, or None; either way `a` says which."""
    without = ctx.reference(cond, SYSTEM, _none)
    if without is None:
        a.lines.append(f"{cond}: no condition without a system prompt and otherwise equal settings")
    else:
        a.lines.append(_quoted(ctx, cond))
    return without


def q7_1(ctx: Context) -> Answer:
    a = Answer("Q7.1", "Does removing the system prompt save tokens without quality loss?")
    generic = ctx.select(_generic)
    if not generic:
        return ctx.missing(a, "with a generic system prompt (no role, nothing contradictory) to remove")
    tokens = token_column(ctx)
    for cond in generic:
        without = _without_system_prompt(ctx, a, cond)
        if without is None:
            continue
        ctx.compare(a, without, against=cond, metrics=ctx.main_metrics() + ([tokens] if tokens else []))
    return a


def _role_question(qid: str, question: str, role: str, types: tuple[str, ...], probes: tuple[str, ...]) -> Question:
    def answer(ctx: Context) -> Answer:
        a = Answer(qid, question, needs_human="style quality is a judgement; A/B the role against no system prompt.")
        found = ctx.select(_role(role))
        if not found:
            return ctx.missing(a, f"whose system prompt gives the role {role!r} only (see questions/topics.py)")
        where = type_filter(*types)
        subset = any(where(r) for r in ctx.run.rows)
        a.lines.append(
            f"on prompts of type {'/'.join(types)}" if subset else "no prompt of a matching type: all prompts"
        )
        for cond in found:
            against = _without_system_prompt(ctx, a, cond)
            if against is None:
                continue
            ctx.compare(
                a, cond, against, metrics=ctx.main_metrics() + probe_metrics(ctx, *probes), where=where if subset else None
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
    if not means:
        a.answerable = False
        return a
    a.shown += list(means)
    best = max(means, key=lambda c: means[c].mean)
    clear = [c for c, e in means.items() if c != best and e.high < means[best].low]
    spread = max(e.mean for e in means.values()) - min(e.mean for e in means.values())
    a.lines.append(
        f"spread of `{ctx.quality}` means across system prompts: {spread:.4g}; best {best} {means[best].format()}"
    )
    a.lines.append(f"conditions clearly below the best: {', '.join(clear) or 'none (a ceiling: the CIs overlap)'}")
    return a


def q7_5(ctx: Context) -> Answer:
    a = Answer("Q7.5", "Does a contradictory system prompt have any negative effect?")
    found = ctx.select(_contradictory)
    if not found:
        return ctx.missing(a, "whose system prompt asks for bad images (see questions/topics.py)")
    for cond in found:
        against = _without_system_prompt(ctx, a, cond)
        if against is None:
            continue
        ctx.compare(a, cond, against)
    return a


QUESTIONS: list[Question] = [
    q7_1,
    _role_question(
        "Q7.2",
        "Does a 'photographer' system prompt improve photo-style images?",
        "photographer",
        PHOTO_TYPES,
        ("photo",),
    ),
    _role_question(
        "Q7.3",
        "Does an 'artist' system prompt improve artistic renders?",
        "artist",
        ART_TYPES,
        ("art", "paint", "illustration"),
    ),
    q7_4,
    q7_5,
]
