"""Where a run's images came from: random or trained weights, the model's fingerprint and source.

Random weights make noise. A run on them tests the pipeline (surgery, sampler,
writer, metrics, report), never the model, and every place a person reads
results must say so: the report, the A/B page, the console and TensorBoard.
They all ask ``weights_are_random`` so the decision lives in one place.
"""

from __future__ import annotations

import os
from typing import Any

#: Weight presets whose tensors are random. ``tiny`` is random until the trained embedded
#: model ships (then ``tiny`` is trained and the random one is ``tiny-random``): the one
#: line to change then is this set.
RANDOM_PRESETS: frozenset[str] = frozenset({"tiny", "tiny-random", "random-z-image-turbo"})

RANDOM_WEIGHTS_NOTICE = "random weights: images are noise; this run tests the pipeline, not the model"


def weights_are_random(weights: Any) -> bool:
    """True when ``weights`` (a run's ``--model.weights`` value) names a random-weight preset.

    Folders, hub ids and single-file specs are trained checkpoints as far as we can
    tell; only the exact preset names count (a folder called ``tiny`` is a folder).
    """
    if not isinstance(weights, (str, os.PathLike)):
        return False
    return os.fspath(weights).strip() in RANDOM_PRESETS


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
