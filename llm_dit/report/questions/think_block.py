"""Study 2, think block: Q2.1-Q2.6 (conditions named none, empty, quality, style, irrelevant ...)."""

from __future__ import annotations

from llm_dit.report.questions.base import Answer, Context, Question, fmt, probe_metrics, token_column
from llm_dit.report.questions.hidden_layer import q1_4
from llm_dit.report.questions.topics import thinking_topics
from llm_dit.results.settings import THINK_KEYS, ConditionSettings


def _no_think(settings: ConditionSettings) -> bool:
    return not settings.has_think_block


def _empty_think(settings: ConditionSettings) -> bool:
    return settings.has_think_block and not settings.thinking_content.strip()


def _focused_on(topic: str | None):
    """Thinking content about ``topic`` only (None: about none of the known topics, i.e. irrelevant)."""

    def predicate(settings: ConditionSettings) -> bool:
        if not settings.thinking_content.strip():
            return False
        topics = thinking_topics(settings.thinking_content)
        return topics == ({topic} if topic else set())

    return predicate


def _vs_no_think(
    qid: str, question: str, predicate, wanted: str, human: str | None = None, probes: tuple[str, ...] = ()
) -> Question:
    """Each condition matching ``predicate`` against the one without a think block (else equal settings)."""

    def answer(ctx: Context) -> Answer:
        a = Answer(qid, question, needs_human=human)
        found = ctx.select(predicate)
        if not found:
            return ctx.missing(a, wanted)
        for cond in found:
            base = ctx.reference(cond, THINK_KEYS, _no_think)
            if base is None:
                a.lines.append(f"{cond}: no condition without a think block and otherwise equal settings")
                continue
            content = ctx.settings(cond).thinking_content
            if content:
                a.lines.append(f"{cond} thinks: {content[:80]!r}{'…' if len(content) > 80 else ''}")
            ctx.compare(a, cond, base, metrics=ctx.main_metrics() + probe_metrics(ctx, *probes))
        return a

    return answer


def q2_5(ctx: Context) -> Answer:
    a = Answer("Q2.5", "What is the token budget trade-off (thinking vs prompt length)?")
    tokens = token_column(ctx)
    if tokens is None or ctx.quality is None:
        a.answerable = False
        a.lines.append("no token counts (num_tokens / caption_tokens) or no quality metric in the table")
        return a
    for cond in ctx.run.conditions:
        t, q = ctx.mean(tokens, cond), ctx.mean(ctx.quality, cond)
        if t.n and q.n:
            a.lines.append(f"{cond}: {fmt(t.mean)} tokens, `{ctx.quality}` {q.format()}")
            a.shown.append(cond)
    return a


def q2_6(ctx: Context) -> Answer:
    a = Answer("Q2.6", "Are think tokens processed differently in the embedding space?")
    cosine = ctx.run.analysis.get("cosine_matrix") or {}
    if cosine.get("names"):
        a.lines += q1_4(ctx).lines
        for name, segments in (ctx.run.analysis.get("segments") or {}).items():
            if segments.get("think_user_cosine") is not None:
                a.lines.append(
                    f"{name}: cosine of the mean think row and the mean user row {fmt(segments['think_user_cosine'])}, "
                    f"think tokens per user token {fmt(segments.get('think_tokens_per_user_token'))}"
                )
    else:
        a.answerable = False
        a.lines.append("needs embedding_analysis.json (cosine similarity between conditions' embeddings)")
    return a


QUESTIONS: list[Question] = [
    _vs_no_think(
        "Q2.1",
        "Does an empty think block change output vs no think block?",
        _empty_think,
        "with an empty think block (encoding.force_think_block without thinking_content)",
    ),
    _vs_no_think(
        "Q2.2",
        "Does quality-focused thinking improve image quality?",
        _focused_on("quality"),
        "whose thinking_content is about image quality only (see questions/topics.py)",
        "perceived quality.",
    ),
    _vs_no_think(
        "Q2.3",
        "Does style thinking transfer style without explicit prompt mention?",
        _focused_on("style"),
        "whose thinking_content is about style only (see questions/topics.py)",
        "style transfer; a CLIP probe (ClipScoreCallback probes) is only a proxy.",
        ("style", "oil", "paint", "brush"),
    ),
    _vs_no_think(
        "Q2.4",
        "Does irrelevant thinking content degrade quality or have no effect?",
        _focused_on(None),
        "whose thinking_content is about none of quality, style or composition (see questions/topics.py)",
    ),
    q2_5,
    q2_6,
]
