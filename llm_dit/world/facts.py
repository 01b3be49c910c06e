"""What a prompt asserts about an image: objects (with optional attributes), relations, background.

A caption never has to state everything: an ``ObjectFact`` holds only what the
text said (``None`` = not stated), so a shuffled or pruned prompt still has
well-defined expected facts. Counts are asserted only by number words ("two
red circles"); "a red circle" asserts presence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

RELATIONS = ("left_of", "right_of", "above", "below")


@dataclass(frozen=True)
class ObjectFact:
    """One noun phrase: the shape (always stated) and whatever else the text said about it."""

    shape: str
    colour: str | None = None
    size: str | None = None
    style: str | None = None
    row: int | None = None
    col: int | None = None
    count: int | None = None


@dataclass(frozen=True)
class RelationFact:
    """``objects[subject]`` is ``relation`` ``objects[object]`` (indices into ``Facts.objects``)."""

    subject: int
    relation: str
    object: int

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(f"relation {self.relation!r} is not one of {RELATIONS}")


@dataclass(frozen=True)
class Facts:
    objects: tuple[ObjectFact, ...] = field(default_factory=tuple)
    relations: tuple[RelationFact, ...] = field(default_factory=tuple)
    background: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "objects": [asdict(o) for o in self.objects],
            "relations": [asdict(r) for r in self.relations],
            "background": self.background,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Facts:
        return cls(
            objects=tuple(ObjectFact(**o) for o in data.get("objects", [])),
            relations=tuple(RelationFact(**r) for r in data.get("relations", [])),
            background=data.get("background"),
        )

    @property
    def empty(self) -> bool:
        return not self.objects and self.background is None
