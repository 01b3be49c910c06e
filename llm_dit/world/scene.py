"""Scenes of the synthetic compositional world: what an image contains, exactly.

A scene is 1-4 objects on a 3x3 grid (one object per cell) over an achromatic
background. Each object has a shape (a noun in captions), a colour and a size
(adjectives), a fill style and a grid cell. Everything a caption can say about
an image (presence, counts, colour binding, size, position, relations, style,
background) follows from the scene, so text-image agreement can be scored
exactly, without any network weights.

Why these choices:

* object colours are eight saturated hues at least 30 degrees apart and the
  backgrounds are achromatic (white / gray / black), so colour survives a VAE
  round trip and an object is never confusable with the background: the
  evaluator separates them by chroma alone;
* the fill pattern is a darker shade of the object's own colour (same hue), so
  a striped or dotted object stays one connected region of one hue;
* ``HELD_OUT`` colour-shape (and a few shape-style) pairs never occur in the
  ``train`` split: a model trained on that split and prompted with a held-out
  pair shows whether it composes attributes or memorises pairs.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")

# Hue (degrees) of each colour; RGB below is HSV(hue, 0.88, 0.92), rounded.
COLOUR_HUES: dict[str, float] = {
    "red": 0.0,
    "orange": 30.0,
    "yellow": 60.0,
    "green": 120.0,
    "cyan": 180.0,
    "blue": 225.0,
    "purple": 275.0,
    "pink": 320.0,
}
COLOUR_SATURATION = 0.88
COLOUR_VALUE = 0.92


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((hue % 360.0) / 360.0, saturation, value)
    return (round(r * 255), round(g * 255), round(b * 255))


COLOURS: dict[str, tuple[int, int, int]] = {
    name: _hsv_to_rgb(hue, COLOUR_SATURATION, COLOUR_VALUE) for name, hue in COLOUR_HUES.items()
}
SIZES: tuple[str, ...] = ("small", "large")
STYLES: tuple[str, ...] = ("flat", "striped", "dotted")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (236, 236, 236),
    "gray": (128, 128, 128),
    "black": (24, 24, 24),
}
GRID = 3
MAX_OBJECTS = 4
SPLITS = ("train", "heldout")

# Attribute combinations never rendered in the train split. Colour-shape pairs:
# each colour loses one shape and each shape loses at least one colour, so every
# colour and every shape is still seen in training. Shape-style pairs: two.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "star"),
        ("orange", "circle"),
        ("yellow", "cross"),
        ("green", "triangle"),
        ("cyan", "square"),
        ("blue", "star"),
        ("purple", "circle"),
        ("pink", "triangle"),
        ("triangle", "dotted"),
        ("cross", "striped"),
    }
)


@dataclass(frozen=True)
class WorldObject:
    """One object: ``row`` and ``col`` index the 3x3 grid (0 = top / left)."""

    shape: str
    colour: str
    size: str
    row: int
    col: int
    style: str = "flat"

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("shape", self.shape, SHAPES),
            ("colour", self.colour, tuple(COLOURS)),
            ("size", self.size, SIZES),
            ("style", self.style, STYLES),
        ):
            if value not in allowed:
                raise ValueError(f"WorldObject.{field}={value!r} is not one of {allowed}")
        for field, value in (("row", self.row), ("col", self.col)):
            if not 0 <= int(value) < GRID:
                raise ValueError(f"WorldObject.{field}={value!r}: grid cells are 0..{GRID - 1}")

    @property
    def combinations(self) -> tuple[tuple[str, str], ...]:
        """The attribute pairs ``HELD_OUT`` is written in."""
        return ((self.colour, self.shape), (self.shape, self.style))

    @property
    def held_out(self) -> bool:
        return any(pair in HELD_OUT for pair in self.combinations)


@dataclass(frozen=True)
class Scene:
    """Objects (in reading order: row, then column) on a background."""

    objects: tuple[WorldObject, ...]
    background: str

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"Scene.background={self.background!r} is not one of {tuple(BACKGROUNDS)}")
        cells = [(o.row, o.col) for o in self.objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"Scene has two objects in one grid cell: cells {cells}")

    def to_dict(self) -> dict[str, Any]:
        return {"background": self.background, "objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        return cls(objects=tuple(WorldObject(**o) for o in data["objects"]), background=data["background"])

    @property
    def held_out(self) -> bool:
        return any(o.held_out for o in self.objects)


def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


_ALL_OBJECT_KINDS = list(itertools.product(SHAPES, COLOURS, STYLES))


def _kinds(split: str, style: str | None) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(allowed in train, held out) (shape, colour, style) kinds, restricted to one style if given."""
    kinds = [k for k in _ALL_OBJECT_KINDS if style is None or k[2] == style]
    held = [k for k in kinds if (k[1], k[0]) in HELD_OUT or (k[0], k[2]) in HELD_OUT]
    train = [k for k in kinds if k not in held]
    return train, held


def sample_scene(
    rng: np.random.Generator | int,
    *,
    split: str = "train",
    n_objects: int | None = None,
    style: str | None = None,
    repeat: int = 0,
) -> Scene:
    """A random scene, deterministic from ``rng``.

    split: ``train`` never contains a ``HELD_OUT`` combination; ``heldout``
    contains at least one (its other objects are drawn from the train kinds).
    n_objects: 1..4 (default: uniform). style: one fill style for every object
    (default: each object draws its own). repeat: how many extra copies of the
    first object's (shape, colour) to place (counting prompts: "three red
    circles"); sizes and styles of the copies are drawn again.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: use one of {SPLITS}")
    if style is not None and style not in STYLES:
        raise ValueError(f"style={style!r}: use one of {STYLES} or None")
    rng = as_generator(rng)
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else int(n_objects)
    if not 1 <= n <= MAX_OBJECTS:
        raise ValueError(f"n_objects={n_objects!r}: a scene holds 1..{MAX_OBJECTS} objects")
    if not 0 <= repeat < n:
        raise ValueError(f"repeat={repeat!r} must be in 0..n_objects-1 ({n - 1})")
    train, held = _kinds(split, style)
    cells = rng.permutation(GRID * GRID)[:n]
    kinds = []
    first = held if split == "heldout" else train
    kinds.append(first[int(rng.integers(len(first)))])
    for _ in range(repeat):
        pool = [k for k in (train + held if split == "heldout" else train) if k[:2] == kinds[0][:2]]
        kinds.append(pool[int(rng.integers(len(pool)))])
    while len(kinds) < n:
        kinds.append(train[int(rng.integers(len(train)))])
    order = rng.permutation(n)  # the held-out object is not always first in reading order
    objects = [
        WorldObject(
            shape=kinds[i][0],
            colour=kinds[i][1],
            size=SIZES[int(rng.integers(len(SIZES)))],
            row=int(cells[j]) // GRID,
            col=int(cells[j]) % GRID,
            style=kinds[i][2],
        )
        for j, i in enumerate(order)
    ]
    objects.sort(key=lambda o: (o.row, o.col))
    background = tuple(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    return Scene(objects=tuple(objects), background=background)
