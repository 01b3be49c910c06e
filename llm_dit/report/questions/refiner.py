"""Study 3, context refiner: Q3.1-Q3.5 (conditions skip, single, double, identity_init, skip_layer<i> ...)."""

from __future__ import annotations

from llm_dit.report.questions.base import Answer, Context, Question, fmt, vs_control


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
    return Answer(
        "Q3.4",
        "Can the context refiner be fine-tuned independently as a style adapter?",
        answerable=False,
        lines=[
            "a predict run cannot answer this: train with `python -m llm_dit.cli fit --config "
            "configs/refiner_style_adapter.yaml`, then run this study with the trained adapter as a condition"
        ],
        needs_human="style fidelity of the adapter's images.",
    )


def q3_5(ctx: Context) -> Answer:
    a = Answer("Q3.5", "What does each layer contribute? (layer-wise ablation)")
    found = [
        c
        for c in ctx.run.conditions
        if any(w in c.lower() for w in ("skip_layer", "ablate", "layer0", "layer1", "layer_"))
    ]
    if not found:
        return ctx.missing(a, "skip_layer0", "ablate_layer1")
    for cond in found:
        a.lines += ctx.compare(cond)
    return a


QUESTIONS: list[Question] = [
    vs_control(
        "Q3.1",
        "Does skipping the context refiner entirely produce coherent images?",
        ("skip",),
        "coherence: metrics cannot tell a coherent image from a plausible-looking mess.",
    ),
    q3_2,
    vs_control("Q3.3", "Do additional layers improve or degrade quality?", ("double", "identity_init", "identity")),
    q3_4,
    q3_5,
]
