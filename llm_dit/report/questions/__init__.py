"""The seed doc's sub-questions, one module per study kind, answered from a run's numbers.

Conditions are found by their recorded settings (encoding options, sampler settings,
surgery specs, prompt transform: see ``llm_dit.results.settings``), never by their
names. Proxy metrics are named as proxies: composition,
coherence, "abstract" and visual smoothness need people (see ``export_ab_page``).
"""

from __future__ import annotations

from llm_dit.report.questions import (
    hidden_layer,
    long_prompt,
    refiner,
    shift_steps,
    system_prompt,
    think_block,
    token_importance,
)
from llm_dit.report.questions.base import Answer, Comparison, Context, Question

QUESTIONS: dict[str, list[Question]] = {
    "hidden_layer": hidden_layer.QUESTIONS,
    "think_block": think_block.QUESTIONS,
    "refiner": refiner.QUESTIONS,
    "shift_steps": shift_steps.QUESTIONS,
    "long_prompt": long_prompt.QUESTIONS,
    "token_importance": token_importance.QUESTIONS,
    "system_prompt": system_prompt.QUESTIONS,
}


def answer_questions(ctx: Context) -> list[Answer]:
    """The sub-question answers of the run's study kind ([] for custom studies)."""
    return [question(ctx) for question in QUESTIONS.get(ctx.run.kind, [])]


__all__ = ["QUESTIONS", "Answer", "Comparison", "Context", "Question", "answer_questions"]
