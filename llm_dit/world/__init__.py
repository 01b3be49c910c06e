"""A synthetic compositional world: scenes, a renderer, captions and an exact, weight-free evaluator.

Every image comes from a known ``Scene``, so the facts a prompt asserts
(``expected_facts``) can be checked against the objects a classical detector
finds in a generated image (``score_image``), GenEval-style, with no network
weights. README section "Synthetic world" shows the whole loop.
"""

from llm_dit.world.captions import (
    FORMS,
    PLACEMENTS,
    caption,
    caption_with_facts,
    key_token_spans,
    long_prompt,
    training_caption,
)
from llm_dit.world.detection import Detection, ImageDetections, detect
from llm_dit.world.facts import Facts, ObjectFact, RelationFact
from llm_dit.world.parse import expected_facts
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
from llm_dit.world.score import FACT_KINDS, SceneScore, check_facts, scene_facts, score_image, score_scene

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "FACT_KINDS",
    "FORMS",
    "HELD_OUT",
    "PLACEMENTS",
    "SHAPES",
    "SIZES",
    "STYLES",
    "Detection",
    "Facts",
    "ImageDetections",
    "ObjectFact",
    "RelationFact",
    "Scene",
    "SceneScore",
    "WorldObject",
    "caption",
    "caption_with_facts",
    "check_facts",
    "detect",
    "expected_facts",
    "key_token_spans",
    "long_prompt",
    "render",
    "render_batch",
    "sample_scene",
    "scene_facts",
    "score_image",
    "score_scene",
    "training_caption",
]
