"""The synthetic world's scenes and renderer: determinism, held-out split, geometry against independent oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llm_dit.world.render import _STAR_INNER, HALF_SIZE, STRIPE_PERIOD, render, render_batch, shape_sdf
from llm_dit.world.scene import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT,
    SHAPES,
    STYLES,
    Scene,
    WorldObject,
    sample_scene,
)


def test_vocabulary_sizes_meet_the_issue():
    assert len(SHAPES) >= 5 and len(COLOURS) >= 8 and set(STYLES) == {"flat", "striped", "dotted"}
    # Backgrounds are achromatic, object colours saturated: never confusable.
    assert all(max(rgb) - min(rgb) == 0 for rgb in BACKGROUNDS.values())
    assert all(max(rgb) - min(rgb) > 150 for rgb in COLOURS.values())


def test_sample_scene_is_deterministic_and_round_trips():
    a, b = sample_scene(7), sample_scene(np.random.default_rng(7))
    assert a == b
    assert Scene.from_dict(a.to_dict()) == a
    assert sample_scene(8) != a


def test_train_split_never_holds_out_and_heldout_always_does():
    train = [sample_scene(i) for i in range(1500)]
    held = [sample_scene(i, split="heldout") for i in range(300)]
    assert not any(pair in HELD_OUT for s in train for o in s.objects for pair in ((o.colour, o.shape), (o.shape, o.style)))
    assert all(any(pair in HELD_OUT for o in s.objects for pair in ((o.colour, o.shape), (o.shape, o.style))) for s in held)
    seen = {(o.colour, o.shape) for s in train for o in s.objects}
    assert {c for c, _ in seen} == set(COLOURS) and {s for _, s in seen} == set(SHAPES)


def test_sample_scene_options():
    scene = sample_scene(3, n_objects=4, style="dotted", repeat=2)
    assert len(scene.objects) == 4 and all(o.style == "dotted" for o in scene.objects)
    kinds = [(o.colour, o.shape) for o in scene.objects]
    assert max(kinds.count(k) for k in kinds) >= 3
    assert len({(o.row, o.col) for o in scene.objects}) == 4
    with pytest.raises(ValueError, match="split"):
        sample_scene(0, split="test")
    with pytest.raises(ValueError, match="n_objects"):
        sample_scene(0, n_objects=5)
    with pytest.raises(ValueError, match="two objects in one grid cell"):
        Scene((WorldObject("circle", "red", "small", 0, 0), WorldObject("star", "blue", "large", 0, 0)), "gray")
    with pytest.raises(ValueError, match="colour"):
        WorldObject("circle", "white", "small", 0, 0)


def _polygon_sdf(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Independent oracle: exact signed distance to a polygon (winding test + nearest edge)."""
    x, y = np.broadcast_arrays(x, y)
    d = np.full(x.shape, np.inf)
    inside = np.zeros(x.shape, dtype=bool)
    for i in range(len(vertices)):
        (ax, ay), (bx, by) = vertices[i], vertices[(i + 1) % len(vertices)]
        t = np.clip(((x - ax) * (bx - ax) + (y - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2), 0, 1)
        d = np.minimum(d, np.hypot(x - ax - t * (bx - ax), y - ay - t * (by - ay)))
        crosses = (ay > y) != (by > y)
        inside ^= crosses & (x < ax + (y - ay) * (bx - ax) / np.where(by == ay, 1, by - ay))
    return np.where(inside, -d, d)


def test_star_and_triangle_distance_fields_match_polygons():
    grid = np.linspace(-1.3, 1.3, 161)
    x, y = np.meshgrid(grid, grid)
    angles = -math.pi / 2 + np.arange(10) * math.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, _STAR_INNER)
    star = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    triangle = np.array([[0.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    np.testing.assert_allclose(shape_sdf("star", x, y), _polygon_sdf(x, y, star), atol=1e-9)
    np.testing.assert_allclose(shape_sdf("triangle", x, y), _polygon_sdf(x, y, triangle), atol=1e-9)


@pytest.mark.parametrize("size", [64, 128, 256])
def test_rendered_circle_area_and_colour(size):
    obj = WorldObject("circle", "blue", "large", 1, 1, "flat")
    image = render(Scene((obj,), "white"), size)  # no rng: no jitter
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    bg = np.array(BACKGROUNDS["white"], dtype=float)
    fg = image[size // 2, size // 2].astype(float)
    np.testing.assert_allclose(fg, COLOURS["blue"], atol=1)
    coverage = ((bg - image.astype(float)) @ (bg - fg)) / ((bg - fg) @ (bg - fg))  # per-pixel alpha
    radius = HALF_SIZE["large"] * size / 3
    assert coverage.sum() == pytest.approx(math.pi * radius**2, rel=0.01)
    edge = (coverage > 0.05) & (coverage < 0.95)
    assert edge.sum() > 2 * math.pi * radius * 0.5  # anti-aliased: a ring of partial pixels


def test_stripes_have_the_stated_period():
    size = 128
    obj = WorldObject("square", "green", "large", 1, 1, "striped")
    column = render(Scene((obj,), "black"), size)[:, size // 2].astype(float).sum(axis=1)
    centre = size // 2
    profile = column[centre - 12 : centre + 12]
    period = round(STRIPE_PERIOD * size)
    np.testing.assert_allclose(profile[:-period], profile[period:], atol=2)
    assert profile.max() - profile.min() > 100


def test_render_batch_is_deterministic_and_jittered():
    scenes = [sample_scene(i) for i in range(6)]
    a, b = render_batch(scenes, 64, 5), render_batch(scenes, 64, 5)
    assert a.shape == (6, 64, 64, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, render_batch(scenes, 64, 6))
    np.testing.assert_array_equal(render(scenes[0], 64, None), render_batch(scenes[:1], 64, None)[0])
    with pytest.raises(ValueError, match="outside"):
        render(scenes[0], 16)
