"""Debug overlay: an image with the detector's boxes and labels drawn on it (for TensorBoard)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from llm_dit.world.detection import ImageDetections

_STYLE_MARK = {"flat": "", "striped": " str", "dotted": " dot"}


def draw_detections(image: np.ndarray, detections: ImageDetections, min_size: int = 256, header: str = "") -> np.ndarray:
    """(H, W, 3) uint8 -> a larger copy (nearest-neighbour, at least ``min_size`` px) with boxes and labels."""
    scale = max(1, -(-min_size // max(image.shape[:2])))
    canvas = Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for det in detections.objects:
        top, left, bottom, right = (v * scale for v in det.bbox)
        draw.rectangle((left - 1, top - 1, right, bottom), outline=(255, 255, 255), width=1)
        label = f"{det.size[0]} {det.colour} {det.shape}{_STYLE_MARK[det.style]}"
        draw.text((left, bottom + 1), label, fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))
    draw.text((2, 2), f"bg {detections.background} {header}".strip(), fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))
    return np.asarray(canvas)
