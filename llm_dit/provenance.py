"""Whether a run's weights are random, and the sentence that says so.

A run on random weights makes noise images: it tests the pipeline (surgery,
sampler, callbacks, tables), never the model. Every place a person reads
results (console, TensorBoard's text tab, the report, the A/B page) asks
`weights_are_random` and says so in the same words, so the decision lives here.
"""

from __future__ import annotations

import os
from typing import Any

#: Weight presets whose tensors are random. ``tiny`` is the trained embedded world model
#: (``llm_dit/models/embedded/tiny/``); its random twin for unit tests is ``tiny-random``.
RANDOM_WEIGHTS: frozenset[str] = frozenset({"tiny-random", "random-z-image-turbo"})

RANDOM_WEIGHTS_NOTE = "random weights: images are noise; this run tests the pipeline, not the model"


def weights_are_random(weights: Any) -> bool:
    """True when ``weights`` (a run's ``--model.weights`` value) names a random-weight preset.

    Folders, hub ids and single-file specs are trained checkpoints as far as we can
    tell; only the exact preset names count (a folder called ``tiny`` is a folder).
    """
    if not isinstance(weights, (str, os.PathLike)):
        return False
    return os.fspath(weights).strip() in RANDOM_WEIGHTS
