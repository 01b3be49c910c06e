"""Scene -> RGB image: analytic signed distance fields, anti-aliased, vectorised.

Every shape is a signed distance field in object units (the object's box is
[-1, 1]^2, y down); the coverage of a pixel is ``clip(0.5 - distance_px, 0, 1)``,
the usual one-pixel box-filter anti-aliasing. Fill patterns are distance fields
too (horizontal stripes, a square lattice of dots), in pixels relative to the
image size, so a pattern looks the same at 64 and 256 px. Objects are rendered
as fixed-size patches, all objects of one shape of a whole batch in one numpy
expression: rendering ~100k training images stays a matter of minutes.

Jitter (when an ``rng`` is given): centre +-``POSITION_JITTER`` of a cell,
half-size x (1 +- ``SIZE_JITTER``), hue +-``HUE_JITTER`` degrees, value
+-``VALUE_JITTER``: small enough that every attribute stays unambiguous,
large enough that a model has to generalise rather than copy pixels.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence

import numpy as np

from llm_dit.world.scene import (
    BACKGROUNDS,
    COLOUR_HUES,
    COLOUR_SATURATION,
    COLOUR_VALUE,
    GRID,
    Scene,
    as_generator,
)

# Object half-size as a fraction of a grid cell (before jitter).
HALF_SIZE = {"small": 0.29, "large": 0.39}
POSITION_JITTER = 0.05
SIZE_JITTER = 0.06
HUE_JITTER = 4.0
VALUE_JITTER = 0.04
# Fill patterns, in fractions of the image side: stripe period and dot lattice 4 px at 64 px,
# so that even a small cross (arms ~3.6 px wide at 64 px) shows several dots along its arms.
STRIPE_PERIOD = 1.0 / 16.0
DOT_PERIOD = 1.0 / 16.0
DOT_RADIUS = 0.32  # of the dot period: dots cover pi * 0.32^2 = 32 % of the area, stripes 50 %
SHADE = 0.45  # pattern colour = SHADE x object colour (same hue, darker)
RIM = 0.0  # px: the pattern fades in between RIM and RIM + 1 px inside the edge
MIN_SIZE, MAX_SIZE = 32, 512

_SQUARE_HALF = 0.88
_CROSS_ARM = 0.3
_STAR_INNER = 0.5


def _box(x: np.ndarray, y: np.ndarray, half_x: float, half_y: float) -> np.ndarray:
    qx, qy = np.abs(x) - half_x, np.abs(y) - half_y
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0)


def _triangle(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Isosceles triangle, apex (0, -1), base y = 1, half-width 1 (Inigo Quilez's sdTriangleIsosceles)."""
    qx, qy = 1.0, 2.0
    px, py = np.abs(x), y + 1.0
    t = np.clip((px * qx + py * qy) / (qx * qx + qy * qy), 0.0, 1.0)
    ax, ay = px - qx * t, py - qy * t
    u = np.clip(px / qx, 0.0, 1.0)
    bx, by = px - qx * u, py - qy
    distance = np.sqrt(np.minimum(ax * ax + ay * ay, bx * bx + by * by))
    return distance * np.sign(np.minimum(py * qx - px * qy, qy - py)) * -1.0


_K1 = (math.cos(math.pi / 5), -math.sin(math.pi / 5))
_STAR_EDGE = (_STAR_INNER * math.sin(math.pi / 5), _STAR_INNER * math.cos(math.pi / 5) - 1.0)


def _star(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Five-pointed star, outer radius 1 (point up), inner radius ``_STAR_INNER`` (iq's sdStar5 folding)."""
    px, py = np.abs(x), -y
    for kx in (_K1[0], -_K1[0]):  # fold the plane into one point's sector
        d = np.maximum(kx * px + _K1[1] * py, 0.0)
        px, py = px - 2.0 * d * kx, py - 2.0 * d * _K1[1]
    px, py = np.abs(px), py - 1.0
    ix, iy = _STAR_EDGE
    h = np.clip((px * ix + py * iy) / (ix * ix + iy * iy), 0.0, 1.0)
    return np.hypot(px - ix * h, py - iy * h) * np.sign(py * ix - px * iy)


def shape_sdf(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance (object units, negative inside) of ``shape`` in its [-1, 1]^2 box."""
    if shape == "circle":
        return np.hypot(x, y) - 1.0
    if shape == "square":
        return _box(x, y, _SQUARE_HALF, _SQUARE_HALF)
    if shape == "cross":
        return np.minimum(_box(x, y, 1.0, _CROSS_ARM), _box(x, y, _CROSS_ARM, 1.0))
    if shape == "triangle":
        return _triangle(x, y)
    if shape == "star":
        return _star(x, y)
    raise ValueError(f"unknown shape {shape!r}")


def pattern_shade(style: str, dx_px: np.ndarray, dy_px: np.ndarray, size: int) -> np.ndarray:
    """Pattern coverage in [0, 1] at pixel offsets from the object centre (0 = object colour)."""
    if style == "flat":
        return np.zeros(np.broadcast_shapes(dx_px.shape, dy_px.shape))
    if style == "striped":
        period = STRIPE_PERIOD * size
        phase = np.mod(dy_px / period, 1.0)
        distance = (np.abs(phase - 0.25) - 0.25) * period  # dark band = first half of each period
        return np.clip(0.5 - distance, 0.0, 1.0) * np.ones_like(dx_px)
    if style == "dotted":
        period = DOT_PERIOD * size
        # One dot on the object's centre, so thin shapes (a cross's arms) always carry dots.
        ox = dx_px - np.round(dx_px / period) * period
        oy = dy_px - np.round(dy_px / period) * period
        return np.clip(0.5 - (np.hypot(ox, oy) - DOT_RADIUS * period), 0.0, 1.0)
    raise ValueError(f"unknown style {style!r}")


def _object_colour(colour: str, hue_shift: float, value_shift: float) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(
        ((COLOUR_HUES[colour] + hue_shift) % 360.0) / 360.0, COLOUR_SATURATION, min(1.0, COLOUR_VALUE + value_shift)
    )
    return np.array(rgb) * 255.0


def _check_size(size: int) -> int:
    if not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise ValueError(f"image size {size!r} is outside {MIN_SIZE}..{MAX_SIZE} px (the world is designed for 64..256)")
    return int(size)


def render_batch(
    scenes: Sequence[Scene], size: int = 64, seed: np.random.Generator | int | None = 0
) -> np.ndarray:
    """Render scenes -> (N, size, size, 3) uint8. ``seed`` drives the jitter (None: no jitter)."""
    size = _check_size(size)
    rng = None if seed is None else as_generator(seed)
    cell = size / GRID
    half_max = HALF_SIZE["large"] * (1 + SIZE_JITTER) * cell
    patch = int(math.ceil(2 * half_max + 3))
    pad = patch // 2 + 2  # a patch never reaches further than this outside the image
    canvas = np.empty((len(scenes), size + 2 * pad, size + 2 * pad, 3), dtype=np.float32)
    for i, scene in enumerate(scenes):
        canvas[i] = BACKGROUNDS[scene.background]

    # One row per object: image index, centre (px), half-size (px), colour, style, shape.
    objects = [(i, obj) for i, scene in enumerate(scenes) for obj in scene.objects]
    jitter = rng.uniform(-1.0, 1.0, size=(len(objects), 5)) if rng is not None else np.zeros((len(objects), 5))
    rows = []
    for (i, obj), j in zip(objects, jitter):
        if True:
            cx = (obj.col + 0.5 + POSITION_JITTER * j[0]) * cell
            cy = (obj.row + 0.5 + POSITION_JITTER * j[1]) * cell
            half = HALF_SIZE[obj.size] * (1 + SIZE_JITTER * j[2]) * cell
            rgb = _object_colour(obj.colour, HUE_JITTER * j[3], VALUE_JITTER * j[4])
            rows.append((i, cx, cy, half, rgb, obj.style, obj.shape))
    if not rows:
        return _to_uint8(canvas[:, pad:-pad, pad:-pad])

    offsets = np.arange(patch, dtype=np.float32) + np.float32(0.5)
    x0 = np.array([math.floor(r[1] - patch / 2) for r in rows])
    y0 = np.array([math.floor(r[2] - patch / 2) for r in rows])
    centres = np.array([[r[1], r[2]] for r in rows], dtype=np.float32)
    halves = np.array([r[3] for r in rows], dtype=np.float32)
    dx = (x0[:, None] + offsets[None, :] - centres[:, :1])[:, None, :]  # (K, 1, P) px
    dy = (y0[:, None] + offsets[None, :] - centres[:, 1:])[:, :, None]  # (K, P, 1) px
    alpha = np.empty((len(rows), patch, patch), dtype=np.float32)
    shade = np.empty((len(rows), patch, patch), dtype=np.float32)
    rim = np.empty((len(rows), patch, patch), dtype=np.float32)
    for shape in {r[6] for r in rows}:
        k = np.array([r[6] == shape for r in rows])
        h = halves[k][:, None, None]
        distance_px = shape_sdf(shape, dx[k] / h, dy[k] / h) * h
        alpha[k] = np.minimum(np.maximum(0.5 - distance_px, 0.0), 1.0)
        # The pattern stops ~1 px inside the edge: every edge pixel has the object's own colour,
        # so its chroma measures its coverage (the detector's size and shape rely on that).
        rim[k] = np.minimum(np.maximum(-distance_px - RIM, 0.0), 1.0)
    for style in {r[5] for r in rows}:
        k = np.array([r[5] == style for r in rows])
        shade[k] = pattern_shade(style, dx[k], dy[k], size) * rim[k]
    colour = np.array([r[4] for r in rows], dtype=np.float32)[:, None, None, :] * (
        1.0 - np.float32(1.0 - SHADE) * shade[..., None]
    )
    for n, r in enumerate(rows):
        ys, xs = slice(pad + y0[n], pad + y0[n] + patch), slice(pad + x0[n], pad + x0[n] + patch)
        a = alpha[n][..., None]
        region = canvas[r[0], ys, xs]
        region += a * (colour[n] - region)
    return _to_uint8(canvas[:, pad:-pad, pad:-pad])


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    # Every pixel is a convex blend of colours in 0..255: adding 0.5 and truncating rounds it.
    pixels = pixels + np.float32(0.5)
    return pixels.astype(np.uint8)


def render(scene: Scene, size: int = 64, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Render one scene -> (size, size, 3) uint8; ``rng`` drives the jitter (None: none)."""
    return render_batch([scene], size, rng)[0]
