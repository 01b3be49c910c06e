"""Study 3, context refiner: Q3.1-Q3.5, conditions found by their surgery on ``context_refiner``.

Q3.1 skip (``skip``, or ``truncate`` to 0 blocks), Q3.3 more blocks (``duplicate``),
Q3.4 a trained style adapter (``style_adapter``), Q3.5 some blocks removed
(``skip_layers``, ``truncate`` to >= 1 block); each against a condition whose
refiner is untouched and whose other settings are equal.
"""

from __future__ import annotations

from llm_dit.report.questions.base import Answer, Context, Question, fmt, vs_reference
from llm_dit.results.settings import ConditionSettings

SURGERY = ("surgery",)


def _untouched(settings: ConditionSettings) -> bool:
    return settings.refiner_untouched


def q3_2(ctx: Context) -> Answer:
    a = Answer("Q3.2", "What is the embedding drift (cosine similarity) before vs after the refiner?")
    drift = ctx.run.analysis.get("drift") or {}
    if not drift.get("series"):
        a.answerable = False
        a.lines.append("embedding_analysis.json with a drift section is not in the run directory")
        return a
    for label, values in drift["series"].items():
        a.lines.append(
            f"{label}: " + ", ".join(f"{layer}: {fmt(v, 3)}" for layer, v in zip(drift.get("layers", []), values))
        )
    a.lines.append("figure: figures/drift.png")
    return a


def q3_4(ctx: Context) -> Answer:
    a = Answer(
        "Q3.4",
        "Can the context refiner be fine-tuned independently as a style adapter?",
        needs_human="style fidelity of the adapter's images.",
    )
    found = ctx.select(lambda s: s.style_adapter is not None)
    if not found:
        a.answerable = False
        a.lines.append(
            "no condition runs a style adapter (surgery variant style_adapter): train one with "
            "`python -m llm_dit.cli fit --config configs/refiner_style_adapter.yaml`, then add "
            "`surgery: [{variant: style_adapter, path: <run>/adapter}]` as a condition of a study"
        )
        return a
    for cond in found:
        spec = ctx.settings(cond).style_adapter or {}
        against = ctx.reference(cond, SURGERY, _untouched)
        if against is None:
            a.lines.append(f"{cond}: no condition without refiner surgery and otherwise equal settings")
            continue
        a.lines.append(f"{cond}: adapter {spec.get('path')} at scale {spec.get('scale', 1.0)}")
        ctx.compare(a, cond, against)
    a.lines.append("a style CLIP probe (ClipScoreCallback probes) measures the style; scene metrics what it costs.")
    return a


QUESTIONS: list[Question] = [
    vs_reference(
        "Q3.1",
        "Does skipping the context refiner entirely produce coherent images?",
        "that bypasses the whole context refiner (surgery skip, or truncate to 0 blocks)",
        lambda s: s.refiner_skipped,
        SURGERY,
        _untouched,
        "coherence: metrics cannot tell a coherent image from a plausible-looking mess.",
    ),
    q3_2,
    vs_reference(
        "Q3.3",
        "Do additional layers improve or degrade quality?",
        "that runs more context-refiner blocks (surgery duplicate)",
        lambda s: s.refiner_deeper,
        SURGERY,
        _untouched,
    ),
    q3_4,
    vs_reference(
        "Q3.5",
        "What does each layer contribute? (layer-wise ablation)",
        "that removes some context-refiner blocks (surgery skip_layers, or truncate to >= 1 block)",
        lambda s: s.refiner_layers_removed,
        SURGERY,
        _untouched,
    ),
]
