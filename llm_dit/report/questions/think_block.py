"""Study 2, think block: Q2.1-Q2.6 (conditions named none, empty, quality, style, irrelevant ...)."""

from __future__ import annotations

from llm_dit.report.questions.base import Answer, Context, Question, fmt, probe_metrics, token_column
from llm_dit.report.questions.hidden_layer import q1_4


def _no_think(ctx: Context) -> str | None:
    return ctx.find("none", "no_think") or ctx.run.control


def _vs_none(
    qid: str, question: str, names: tuple[str, ...], human: str | None = None, probes: tuple[str, ...] = ()
) -> Question:
    def answer(ctx: Context) -> Answer:
        a = Answer(qid, question, needs_human=human)
        cond, base = ctx.find(*names), _no_think(ctx)
        if cond is None or base is None or cond == base:
            return ctx.missing(a, *names)
        a.lines += ctx.compare(cond, against=base, metrics=ctx.main_metrics() + probe_metrics(ctx, *probes))
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
    _vs_none("Q2.1", "Does an empty think block change output vs no think block?", ("empty",)),
    _vs_none("Q2.2", "Does quality-focused thinking improve image quality?", ("quality",), "perceived quality."),
    _vs_none(
        "Q2.3",
        "Does style thinking transfer style without explicit prompt mention?",
        ("style",),
        "style transfer; a CLIP probe (ClipScoreCallback probes) is only a proxy.",
        ("style", "oil", "paint", "brush"),
    ),
    _vs_none("Q2.4", "Does irrelevant thinking content degrade quality or have no effect?", ("irrelevant",)),
    q2_5,
    q2_6,
]
