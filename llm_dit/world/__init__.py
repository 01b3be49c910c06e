"""A synthetic compositional world: scenes, a renderer, captions and an exact, weight-free evaluator.

Every image comes from a known ``Scene``, so the facts a prompt asserts
(``expected_facts``) can be checked against the objects a classical detector
finds in a generated image, GenEval-style, with no network weights.
"""

from llm_dit.world.render import render, render_batch
from llm_dit.world.scene import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT,
    SHAPES,
    SIZES,
    STYLES,
    Scene,
    WorldObject,
    sample_scene,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "HELD_OUT",
    "SHAPES",
    "SIZES",
    "STYLES",
    "Scene",
    "WorldObject",
    "render",
    "render_batch",
    "sample_scene",
]
