"""Study 6, token importance and position: Q6.1-Q6.5, conditions found by their prompt transform.

Each condition is compared with one that differs from it only in the prompt
transform and uses none (or ``baseline``, which leaves the prompt as it is).
"""

from __future__ import annotations

from llm_dit.report.questions.base import Answer, Context, Question, vs_reference
from llm_dit.results.settings import ConditionSettings

TRANSFORM = ("prompt_transform",)


def _plain(settings: ConditionSettings) -> bool:
    return settings.transform is None


def _transform(*names: str):
    return lambda settings: settings.transform in names


def _with_reference(ctx: Context, a: Answer, conds: list[str]) -> None:
    for cond in conds:
        against = ctx.reference(cond, TRANSFORM, _plain)
        if against is None:
            a.lines.append(f"{cond}: no condition without a prompt transform and otherwise equal settings")
        else:
            ctx.compare(a, cond, against)


def q6_1(ctx: Context) -> Answer:
    a = Answer("Q6.1", "Does shuffling destroy semantic meaning or just reduce quality?")
    found = ctx.select(_transform("shuffle_all", "shuffle_nouns"))
    if not found:
        return ctx.missing(a, "with prompt_transform shuffle_all or shuffle_nouns")
    _with_reference(ctx, a, found)
    a.lines.append("meaning lost = clip_score (vs the original prompt) drops; quality lost = detail_score drops.")
    return a


def q6_2(ctx: Context) -> Answer:
    a = Answer("Q6.2", "Are nouns more important than adjectives?")
    nouns, adjectives = ctx.select(_transform("remove_nouns")), ctx.select(_transform("remove_adjectives"))
    if not nouns or not adjectives:
        return ctx.missing(a, "with prompt_transform remove_nouns and one with remove_adjectives")
    _with_reference(ctx, a, nouns + adjectives)
    for noun in nouns:
        for adjective in adjectives:
            if ctx.settings(noun).differences(ctx.settings(adjective)) <= set(TRANSFORM):
                ctx.compare(a, noun, against=adjective)
    a.lines.append("nouns matter more if removing them lowers clip_score more than removing adjectives.")
    return a


def q6_5(ctx: Context) -> Answer:
    a = Answer("Q6.5", "Is there a 'sweet spot' position for key concepts?")
    front, back = ctx.select(_transform("front_load")), ctx.select(_transform("back_load"))
    plain = [ctx.reference(c, TRANSFORM, _plain) for c in front + back]
    conds = list(dict.fromkeys(front + [c for c in plain if c] + back))
    if len(conds) < 2 or ctx.quality is None:
        return ctx.missing(a, "with prompt_transform front_load or back_load (and a quality metric)")
    ctx.table(a, ctx.quality, conds)
    a.lines.append("three positions only bound the answer; more positions need a dedicated position sweep.")
    a.needs_human = "whether the key concept is visibly present at each position."
    return a


QUESTIONS: list[Question] = [
    q6_1,
    q6_2,
    vs_reference(
        "Q6.3",
        "Does token position affect its influence on the image?",
        "with prompt_transform front_load or back_load",
        _transform("front_load", "back_load"),
        TRANSFORM,
        _plain,
    ),
    vs_reference(
        "Q6.4",
        "Does duplicating a word increase its presence in the image?",
        "with prompt_transform duplicate_important",
        _transform("duplicate_important"),
        TRANSFORM,
        _plain,
        "presence of the duplicated concept (or per-concept probes in metadata.elements).",
    ),
    q6_5,
]
