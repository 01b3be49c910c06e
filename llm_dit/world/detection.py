"""Image -> the objects in it, by classical image processing (numpy + scipy.ndimage, no weights).

The world is built so that this is easy and exact on rendered scenes:

* background: the median colour of the image border, nearest of ``BACKGROUNDS``;
* objects: backgrounds are achromatic and object colours saturated, so the
  foreground is every pixel whose chroma (max - min channel) exceeds
  ``CHROMA_THRESHOLD``; objects sit in separate grid cells, so connected
  components are objects;
* colour: the chroma-weighted mean hue of the component on the hexagonal hue
  circle (blending with an achromatic background and the darker pattern shade
  leave the hue unchanged), nearest of ``COLOURS``;
* shape: the component's coverage map against each shape's template, fitted by
  mass and centroid and rendered like the renderer does (highest soft IoU); a
  region that fits no shape well (``MIN_SHAPE_IOU``) or has no single hue
  (``MIN_HUE_CONCENTRATION``) is not an object;
* size: bounding-box extent over the shape's extent, in grid cells;
* position: the fitted template centre's grid cell;
* style: inside the eroded mask, the shade ``(1 - chroma / reference chroma) /
  (1 - SHADE)`` per pixel: mean coverage under half the dot coverage is flat;
  otherwise striped when row means explain the shade variance and column
  means do not (horizontal stripes), dotted when both do equally (a lattice).

Thresholds sit half-way between the rendered classes (from the renderer's
constants, not fitted to data); validation numbers are in benchmarks/NOTES.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from llm_dit.world.render import DOT_RADIUS, HALF_SIZE, SHADE, SIZE_JITTER, shape_sdf
from llm_dit.world.scene import BACKGROUNDS, COLOURS, GRID, SHAPES

CHROMA_THRESHOLD = 48.0
# Components smaller than this fraction of a cell's area are noise (a small star covers ~8 %).
MIN_AREA_FRACTION = 0.02
# Half-size (in cells) between the largest small object and the smallest large one.
SIZE_THRESHOLD = 0.5 * (HALF_SIZE["small"] * (1 + SIZE_JITTER) + HALF_SIZE["large"] * (1 - SIZE_JITTER))
# Shade coverage of each style: flat 0, dotted pi * r^2, striped 0.5; thresholds half-way.
_DOTTED_COVERAGE = math.pi * DOT_RADIUS**2
STYLE_THRESHOLDS = (0.5 * _DOTTED_COVERAGE, 0.5 * (_DOTTED_COVERAGE + 0.5))
# Horizontal stripes: row means explain all shade variance, column means none (anisotropy 1);
# a dot lattice is isotropic (0). Half-way between.
STRIPE_ANISOTROPY = 0.5
REFERENCE_CHROMA_PERCENTILE = 90
# A coloured region is an object only if it looks like one shape in one colour. Clean renders
# reach soft IoU >= 0.84 (64 px) and hue concentration ~1.0; these floors leave room for
# imperfect generated images while colour noise (a random-weight model's output) stays out.
MIN_SHAPE_IOU = 0.7
MIN_HUE_CONCENTRATION = 0.9



@dataclass(frozen=True)
class Detection:
    """One detected object; ``bbox`` = (top, left, bottom, right) pixels, bottom/right exclusive."""

    shape: str
    colour: str
    size: str
    row: int
    col: int
    style: str
    bbox: tuple[int, int, int, int]
    shape_iou: float
    shade_coverage: float


@dataclass(frozen=True)
class ImageDetections:
    """Objects found, the background, and how many coloured regions were not objects."""

    objects: tuple[Detection, ...]
    background: str
    rejected: int = 0


def _hue_plane(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hexagonal hue coordinates (a, b) of RGB values: the angle is the hue, the length ~ chroma."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return 2.0 * r - g - b, math.sqrt(3.0) * (g - b)


_COLOUR_NAMES = tuple(COLOURS)
_COLOUR_ANGLES = np.array(
    [math.atan2(*reversed([float(x) for x in _hue_plane(np.array(COLOURS[c], dtype=np.float64))])) for c in _COLOUR_NAMES]
)
_BACKGROUND_NAMES = tuple(BACKGROUNDS)
_BACKGROUND_RGB = np.array([BACKGROUNDS[b] for b in _BACKGROUND_NAMES], dtype=np.float32)


def _shape_moments(shape: str) -> tuple[float, float, float]:
    """(area, centroid x, centroid y) of a shape in object units, on a fine grid."""
    step = 1.0 / 200.0
    grid = (np.arange(401) - 200) * step * 1.05
    inside = shape_sdf(shape, grid[None, :], grid[:, None]) <= 0
    ys, xs = np.nonzero(inside)
    return float(inside.sum() * (step * 1.05) ** 2), float(grid[xs].mean()), float(grid[ys].mean())


_MOMENTS = {shape: _shape_moments(shape) for shape in SHAPES}


def _shape_extent(shape: str) -> tuple[float, float, float, float]:
    """(xmin, xmax, ymin, ymax) of a shape in object units, on a fine grid."""
    grid = (np.arange(401) - 200) / 190.0
    ys, xs = np.nonzero(shape_sdf(shape, grid[None, :], grid[:, None]) <= 0)
    return grid[xs.min()], grid[xs.max()], grid[ys.min()], grid[ys.max()]


_EXTENTS = {shape: _shape_extent(shape) for shape in SHAPES}
EDGE_GROWTH = 0.35


def fit_shapes(alpha: np.ndarray) -> dict[str, tuple[float, float, float, float]]:
    """Fit every shape to a coverage map by its moments -> {shape: (soft IoU, centre x, centre y, half-size px)}.

    Each template has the object's mass (sum of coverage) and centroid, so its
    scale is the object's half-size and its centre the object's centre; it is
    rendered with the renderer's coverage, so anti-aliased edges compare like
    with like at any resolution. Soft IoU = sum(min) / sum(max).
    """
    mass = float(alpha.sum())
    ys = np.arange(alpha.shape[0], dtype=np.float64)[:, None] + 0.5
    xs = np.arange(alpha.shape[1], dtype=np.float64)[None, :] + 0.5
    cx, cy = float((alpha.sum(axis=0) * xs[0]).sum() / mass), float((alpha.sum(axis=1) * ys[:, 0]).sum() / mass)
    fits = {}
    for shape in SHAPES:
        area, ux, uy = _MOMENTS[shape]
        half = math.sqrt(mass / area)
        ox, oy = cx - half * ux, cy - half * uy
        coverage = np.clip(0.5 - shape_sdf(shape, (xs - ox) / half, (ys - oy) / half) * half, 0.0, 1.0)
        overlap = float(np.minimum(alpha, coverage).sum())
        fits[shape] = (overlap / (mass + float(coverage.sum()) - overlap), ox, oy, half)
    return fits


def classify_background(image: np.ndarray) -> str:
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float32)
    median = np.median(border, axis=0)
    return _BACKGROUND_NAMES[int(np.argmin(((_BACKGROUND_RGB - median) ** 2).sum(axis=1)))]


def _colour(pixels: np.ndarray) -> tuple[str, float]:
    """(nearest colour name, hue concentration): the length of the summed hue vectors over the
    sum of their lengths, 1 for one hue (a rendered object), low for colour noise."""
    a, b = _hue_plane(pixels)
    sa, sb = float(a.sum()), float(b.sum())
    concentration = math.hypot(sa, sb) / max(float(np.hypot(a, b).sum()), 1e-9)
    distance = np.abs(np.angle(np.exp(1j * (_COLOUR_ANGLES - math.atan2(sb, sa)))))
    return _COLOUR_NAMES[int(np.argmin(distance))], concentration


def reference_chroma(values: np.ndarray) -> float:
    """The object's own chroma: a high percentile of its pixels (robust to noise, unlike the max)."""
    k = min(len(values) - 1, int(REFERENCE_CHROMA_PERCENTILE / 100 * len(values)))
    return float(np.partition(values, k)[k])


def coverage_map(mask: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    """Per-pixel object coverage of a component (with a one-pixel margin of zeros already in the crop).

    Coverage of an edge pixel is its chroma over the object's chroma (the
    background is achromatic); the darker pattern shade would read as partial
    coverage, so pixels inside the eroded component count as fully covered.
    """
    reference = reference_chroma(chroma[mask])
    alpha = np.clip(chroma / max(reference, 1e-6), 0.0, 1.0) * mask
    alpha[ndimage.binary_erosion(mask)] = 1.0
    return alpha


def _explained(shade: np.ndarray, interior: np.ndarray, axis: int) -> float:
    """Share of the shade variance explained by the row (axis=1) or column (axis=0) means."""
    n = interior.sum(axis=axis)
    keep = n > 0
    means = (shade * interior).sum(axis=axis)[keep] / n[keep]
    total = shade[interior].var()
    mean = shade[interior].mean()
    return float((n[keep] * (means - mean) ** 2).sum() / n[keep].sum() / total) if total > 0 else 0.0


def style_features(mask: np.ndarray, chroma: np.ndarray) -> tuple[float, float, float]:
    """(shade coverage, row-explained share, column-explained share) inside the eroded mask."""
    interior = ndimage.binary_erosion(mask)
    if interior.sum() < 4:
        interior = mask
    reference = reference_chroma(chroma[interior])
    shade = np.clip((1.0 - chroma / max(reference, 1e-6)) / (1.0 - SHADE), 0.0, 1.0) * interior
    return float(shade[interior].mean()), _explained(shade, interior, 1), _explained(shade, interior, 0)


def _style(mask: np.ndarray, chroma: np.ndarray) -> tuple[str, float]:
    coverage, rows, cols = style_features(mask, chroma)
    if coverage < STYLE_THRESHOLDS[0]:
        return "flat", coverage
    return ("striped" if rows - cols > STRIPE_ANISOTROPY else "dotted"), coverage


def detect(image: np.ndarray) -> ImageDetections:
    """Objects and background of an (H, W, 3) uint8 (or 0..255 float) RGB image."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"detect expects an (H, W, 3) RGB image, got shape {image.shape}")
    pixels = image.astype(np.float32)
    height, width = pixels.shape[:2]
    cell_h, cell_w = height / GRID, width / GRID
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    # Channel-wise maximum / minimum: numpy's reduction over a length-3 last axis is ~10x slower.
    chroma = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    labels, _ = ndimage.label(chroma > CHROMA_THRESHOLD)
    min_area = MIN_AREA_FRACTION * cell_h * cell_w
    found, rejected = [], 0
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None:
            continue
        mask = labels[window] == index
        if mask.sum() < min_area:
            continue
        # One pixel of margin so that the fitted template's edge is compared too.
        y0, x0 = max(window[0].start - 1, 0), max(window[1].start - 1, 0)
        crop = (slice(y0, window[0].stop + 1), slice(x0, window[1].stop + 1))
        component = labels[crop] == index
        alpha = coverage_map(component, chroma[crop])
        fits = fit_shapes(alpha)
        shape = max(fits, key=lambda k: fits[k][0])
        iou, ox, oy, half_px = fits[shape]
        colour, concentration = _colour(pixels[window][mask])
        if iou < MIN_SHAPE_IOU or concentration < MIN_HUE_CONCENTRATION:
            rejected += 1
            continue
        cx, cy = x0 + ox, y0 + oy
        top, left = window[0].start, window[1].start
        bottom, right = window[0].stop, window[1].stop
        # Size: the larger of two estimates that both err low, never high. The fitted template's
        # scale misses patterned edge pixels (their shade reads as partial coverage); the box
        # (which keeps pixels down to ~1/4 coverage, ~EDGE_GROWTH px beyond the shape) misses
        # the faint anti-aliased pixels of a star's thin points.
        xmin, xmax, ymin, ymax = _EXTENTS[shape]
        half = max(
            (right - left - 2 * EDGE_GROWTH) / (xmax - xmin) / cell_w,
            (bottom - top - 2 * EDGE_GROWTH) / (ymax - ymin) / cell_h,
            half_px / math.sqrt(cell_h * cell_w),
        )
        style, coverage = _style(mask, chroma[window])
        found.append(
            Detection(
                shape=shape,
                colour=colour,
                size="large" if half > SIZE_THRESHOLD else "small",
                row=min(GRID - 1, max(0, int(cy // cell_h))),
                col=min(GRID - 1, max(0, int(cx // cell_w))),
                style=style,
                bbox=(top, left, bottom, right),
                shape_iou=iou,
                shade_coverage=coverage,
            )
        )
    found.sort(key=lambda d: (d.row, d.col))
    return ImageDetections(objects=tuple(found), background=classify_background(image), rejected=rejected)
