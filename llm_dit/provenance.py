"""Whether a run's weights are random, and the sentence that says so.

A run on random weights makes noise images: it tests the pipeline (surgery,
sampler, callbacks, tables), never the model. Every place a person reads
results (console, TensorBoard's text tab, the report) says so in the same words.
"""

from __future__ import annotations

# `tiny` leaves this set when the trained embedded model ships as `tiny`.
RANDOM_WEIGHTS = {"tiny-random", "random-z-image-turbo", "tiny"}

RANDOM_WEIGHTS_NOTE = "random weights: images are noise; this run tests the pipeline, not the model"


def weights_are_random(weights: str) -> bool:
    """True for the presets whose weights are random initialisations (names compared as given)."""
    return str(weights) in RANDOM_WEIGHTS
