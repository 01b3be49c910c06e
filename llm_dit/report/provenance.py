"""Where a run's images came from: random or trained weights, the model's fingerprint and source.

Random weights make noise. A run on them tests the pipeline (surgery, sampler,
writer, metrics, report), never the model, and every place a person reads
results must say so: the report, the A/B page, the console and TensorBoard.
They all ask ``llm_dit.provenance.weights_are_random``: the decision lives in one place.
"""

from __future__ import annotations

from typing import Any

from llm_dit.provenance import RANDOM_WEIGHTS as RANDOM_PRESETS
from llm_dit.provenance import RANDOM_WEIGHTS_NOTE as RANDOM_WEIGHTS_NOTICE
from llm_dit.provenance import weights_are_random

__all__ = ["RANDOM_PRESETS", "RANDOM_WEIGHTS_NOTICE", "describe_source", "weights_are_random"]


def describe_source(environment: dict[str, Any]) -> str:
    """One line for a report header: the weights, whether they are random, and the fingerprint.

    ``environment`` is the run's environment.json (``weights``, ``transformer_fingerprint``;
    an optional ``source`` string describes the weights further).
    """
    weights = environment.get("weights")
    if weights is None:
        return "model: unknown (no environment.json with `weights` in the run directory)"
    kind = "a preset with random weights" if weights_are_random(weights) else "trained weights"
    line = f"model: weights `{weights}`, {kind}"
    if environment.get("source") and environment.get("source") != weights:
        line += f", source {environment['source']}"
    fingerprint = environment.get("transformer_fingerprint")
    return line + (f", transformer fingerprint `{fingerprint}`" if fingerprint else ", no transformer fingerprint recorded")
