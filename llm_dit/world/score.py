"""Facts x detected objects -> which facts hold: the GenEval-style scorer of the world.

Each fact is one yes/no question about the image, of one kind (``FACT_KINDS``):

* ``presence``  an object of the stated shape exists;
* ``colour``    an object of that shape and colour exists (colour binding);
* ``size`` / ``style`` / ``position``  an object of that shape (and colour, if
  stated) with that size / fill style / grid cell (the stated row or column);
* ``count``     exactly N objects of that shape (and colour) exist;
* ``relation``  two different objects matching the two noun phrases (shape,
  colour, size as stated) stand in the stated relation (grid columns / rows);
* ``background`` the background colour.

Binding facts nest on identity (shape + colour), as in GenEval: a wrong colour
also fails that object's size, style and position facts. An image passes
(``all_hold``) when every fact of its prompt holds. ``check_facts`` takes any
objects with shape / colour / size / style / row / col, so the same rules score
detections and ground-truth scenes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

from llm_dit.world.detection import ImageDetections, detect
from llm_dit.world.facts import Facts, ObjectFact, RelationFact
from llm_dit.world.parse import expected_facts
from llm_dit.world.scene import STYLES, Scene, sample_scene

FACT_KINDS = ("presence", "count", "colour", "size", "position", "style", "relation", "background")


class HasAttributes(Protocol):
    shape: str
    colour: str
    size: str
    style: str
    row: int
    col: int


@dataclass(frozen=True)
class FactResult:
    kind: str
    description: str
    holds: bool


@dataclass(frozen=True)
class SceneScore:
    """Per-fact results for one image (and the detections they came from, if any)."""

    results: tuple[FactResult, ...]
    detections: ImageDetections | None = None

    @property
    def all_hold(self) -> bool | None:
        """Every fact holds (None when the prompt states no fact)."""
        return all(r.holds for r in self.results) if self.results else None

    @property
    def fraction(self) -> float | None:
        return float(np.mean([r.holds for r in self.results])) if self.results else None

    def by_kind(self) -> dict[str, float | None]:
        """Share of the facts of each kind that hold (None where the prompt has none of that kind)."""
        out: dict[str, float | None] = {}
        for kind in FACT_KINDS:
            values = [r.holds for r in self.results if r.kind == kind]
            out[kind] = float(np.mean(values)) if values else None
        return out


def _matches(obj: HasAttributes, fact: ObjectFact, attributes: Sequence[str]) -> bool:
    for name in ("shape", "colour", *attributes):
        wanted = getattr(fact, name)
        if wanted is not None and getattr(obj, name) != wanted:
            return False
    return True


def _describe(fact: ObjectFact) -> str:
    words = [str(getattr(fact, k)) for k in ("size", "colour", "style") if getattr(fact, k) is not None]
    where = "" if fact.row is None and fact.col is None else f" at row {fact.row}, col {fact.col}"
    count = "" if fact.count is None else f"{fact.count} x "
    return count + " ".join([*words, fact.shape]) + where


def _related(a: HasAttributes, b: HasAttributes, relation: str) -> bool:
    if relation == "left_of":
        return a.col < b.col
    if relation == "right_of":
        return a.col > b.col
    if relation == "above":
        return a.row < b.row
    return a.row > b.row  # below


def check_facts(facts: Facts, objects: Sequence[HasAttributes], background: str | None) -> tuple[FactResult, ...]:
    """Which facts hold for these objects and background (see the module docstring)."""
    results: list[FactResult] = []
    for fact in facts.objects:
        name = _describe(fact)
        results.append(FactResult("presence", name, any(o.shape == fact.shape for o in objects)))
        if fact.count is not None:
            n = sum(_matches(o, fact, ()) for o in objects)
            results.append(FactResult("count", name, n == fact.count))
        if fact.colour is not None:
            results.append(FactResult("colour", name, any(_matches(o, fact, ()) for o in objects)))
        for kind, attributes in (("size", ("size",)), ("style", ("style",)), ("position", ("row", "col"))):
            if any(getattr(fact, a) is not None for a in attributes):
                results.append(FactResult(kind, name, any(_matches(o, fact, attributes) for o in objects)))
    for relation in facts.relations:
        subject, obj = facts.objects[relation.subject], facts.objects[relation.object]
        firsts = [o for o in objects if _matches(o, subject, ("size",))]
        seconds = [o for o in objects if _matches(o, obj, ("size",))]
        holds = any(a is not b and _related(a, b, relation.relation) for a in firsts for b in seconds)
        results.append(FactResult("relation", f"{_describe(subject)} {relation.relation} {_describe(obj)}", holds))
    if facts.background is not None:
        results.append(FactResult("background", f"{facts.background} background", background == facts.background))
    return tuple(results)


def score_image(image: np.ndarray, prompt: str | Facts) -> SceneScore:
    """Score one (H, W, 3) uint8 image against a prompt's text (or its facts)."""
    facts = expected_facts(prompt) if isinstance(prompt, str) else prompt
    detections = detect(image)
    return SceneScore(check_facts(facts, detections.objects, detections.background), detections)


def score_scene(scene: Scene, prompt: str | Facts) -> SceneScore:
    """Score a ground-truth scene against a prompt (what a perfect image of ``scene`` would get)."""
    facts = expected_facts(prompt) if isinstance(prompt, str) else prompt
    return SceneScore(check_facts(facts, scene.objects, scene.background))


def scene_facts(scene: Scene) -> Facts:
    """Every fact of a scene: each object fully, each (colour, shape) count, each pair's relations."""

    objects: list[ObjectFact] = [
        ObjectFact(o.shape, o.colour, o.size, o.style, o.row, o.col) for o in scene.objects
    ]
    groups: dict[tuple[str, str], int] = {}
    for o in scene.objects:
        groups[(o.colour, o.shape)] = groups.get((o.colour, o.shape), 0) + 1
    relations = []
    for i, a in enumerate(scene.objects):
        for j, b in enumerate(scene.objects):
            if i != j:
                for name in ("left_of", "right_of", "above", "below"):
                    if _related(a, b, name):
                        relations.append(RelationFact(i, name, j))
    objects += [ObjectFact(shape, colour, count=n) for (colour, shape), n in groups.items()]
    return Facts(tuple(objects), tuple(relations), scene.background)


def summary(scores: Sequence[SceneScore]) -> dict[str, Any]:
    """Per-kind share of facts that hold over many images, the all-facts rate, and counts."""
    out: dict[str, Any] = {}
    for kind in FACT_KINDS:
        values = [r.holds for s in scores for r in s.results if r.kind == kind]
        out[kind] = {"accuracy": float(np.mean(values)) if values else None, "facts": len(values)}
    flags = [s.all_hold for s in scores if s.all_hold is not None]
    out["all_hold"] = {"accuracy": float(np.mean(flags)) if flags else None, "images": len(flags)}
    return out


def item_values(score: SceneScore) -> dict[str, float | None]:
    """The per-item metric values of one score: ``all``, ``facts`` and one per fact kind."""
    values: dict[str, float | None] = {"all": None if score.all_hold is None else float(score.all_hold), "facts": score.fraction}
    values.update(score.by_kind())
    return values


@lru_cache(maxsize=4)
def _random_scenes(n: int, seed: int) -> tuple[Scene, ...]:
    rng = np.random.default_rng(seed)
    return tuple(sample_scene(rng) for _ in range(n))


def chance_level(prompt: str | Facts, scenes: int = 200, seed: int = 0) -> dict[str, float | None]:
    """Mean ``item_values`` of a prompt over random world scenes: what an image unrelated to it scores.

    Exact (ground-truth scenes, no rendering), so it costs milliseconds; the
    scene score callback reports it next to its means as the chance level.
    """
    facts = expected_facts(prompt) if isinstance(prompt, str) else prompt
    rows = [item_values(SceneScore(check_facts(facts, s.objects, s.background))) for s in _random_scenes(scenes, seed)]
    out: dict[str, float | None] = {}
    for name in rows[0]:
        values = [r[name] for r in rows if r[name] is not None]
        out[name] = float(np.mean(values)) if values else None
    return out


def fill_share(objects: Sequence[HasAttributes], style: str) -> float | None:
    """Share of ``objects`` drawn with fill ``style`` (None when there are none).

    Independent of any prompt: what a style adapter is meant to move. On
    detections it reads the detector's own fill classification; on a ground-truth
    scene's objects it is the scene's true share (how tests hold one against the other).
    """
    if style not in STYLES:
        raise ValueError(f"fill style {style!r} is not one of {STYLES}")
    return float(np.mean([o.style == style for o in objects])) if objects else None


def fill_share_chance(style: str, scenes: int = 200, seed: int = 0) -> float:
    """Mean ``fill_share`` of random world scenes: the share an image unrelated to any style shows."""
    return float(np.mean([fill_share(s.objects, style) for s in _random_scenes(scenes, seed)]))
