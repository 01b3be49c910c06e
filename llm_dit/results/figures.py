"""Pure figure builders: data in, ``matplotlib.figure.Figure`` out.

No pyplot state: figures are made with ``Figure()`` so they can be built in a
callback on a headless GPU node, saved as PNG and handed to TensorBoard
without leaking open figures. The TensorBoard callback and the report both use
these functions, so a figure looks the same in both places.

Readable at a glance: colour scales span the data's own range (a 0.3 % spread
fills the whole colour map), cell labels carry as many decimals as that spread
needs to tell cells apart (``cell_format``), long tick labels are shortened and
the canvas is sized from the labels so none is clipped, and callers skip
matrices that can only show one number (``varies``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image


MAX_LABEL = 32  # characters of a tick label; longer ones are shortened in the middle
_CHAR_INCH = 0.075  # width of one 8-9 pt character


def _size(
    n_cols: int, n_rows: int, cell: float = 0.6, base: tuple[float, float] = (3.0, 2.0),
    col_labels: Sequence[str] = (), row_labels: Sequence[str] = (), title: str = "",
) -> tuple[float, float]:
    """Figure size: the cells plus room for the longest row label (left) and rotated column label
    (below), and at least the title's width (a 12 pt title character is ~0.1 inch)."""
    row_room = _CHAR_INCH * max((len(r) for r in row_labels), default=0)
    col_room = 0.71 * _CHAR_INCH * max((len(c) for c in col_labels), default=0)  # 45 degrees: sin(45) of the width
    width = max(base[0] + cell * n_cols + row_room, 0.1 * len(title) + 1.5)
    return (min(width, 30.0), min(base[1] + cell * n_rows + col_room, 24.0))


def short_label(text: object, limit: int = MAX_LABEL) -> str:
    """``text`` cut in the middle to ``limit`` characters (both ends usually tell conditions apart)."""
    text = str(text)
    if len(text) <= limit:
        return text
    keep = (limit - 1) // 2
    return text[:keep] + "…" + text[len(text) - (limit - 1 - keep):]


def varies(values: np.ndarray | Sequence[Sequence[float | None]], tolerance: float = 1e-9) -> bool:
    """True when the finite cells hold at least two different numbers (a figure of them says something)."""
    data = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float) if len(values) else np.array([])
    finite = data[np.isfinite(data)]
    return finite.size > 1 and float(finite.max() - finite.min()) > tolerance * max(1.0, float(np.abs(finite).max()))


def cell_format(values: np.ndarray) -> str:
    """A format for cell labels: enough decimals to resolve the spread of ``values`` (about 1/100 of it).

    Fixed-point below 1e6 (``1872.4`` and ``1868.1``, never ``1.87e+03`` twice);
    scientific only for very large or very small magnitudes.
    """
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return "{:.3g}"
    magnitude = float(np.abs(finite).max())
    if magnitude >= 1e6 or 0 < magnitude < 1e-3:
        return "{:.3e}"
    spread = float(finite.max() - finite.min())
    if spread <= 0:
        decimals = 3 if magnitude < 10 else (1 if magnitude < 1000 else 0)
    else:
        decimals = int(np.clip(2 - np.floor(np.log10(spread)), 0, 6))
    return "{:." + str(decimals) + "f}"


def _annotate(ax, data: np.ndarray, image, fontsize: int = 8) -> None:
    """Write each finite cell's value in a colour that contrasts with its cell."""
    fmt = cell_format(data)
    norm, cmap = image.norm, image.cmap
    for (r, c), v in np.ndenumerate(data):
        if np.isfinite(v):
            red, green, blue, _ = cmap(norm(v))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=fontsize, color="white" if dark else "black")


def _limits(data: np.ndarray) -> tuple[float | None, float | None]:
    """Colour limits from the finite data (a constant gets a small band around it)."""
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return None, None
    low, high = float(finite.min()), float(finite.max())
    if high - low <= 0:
        pad = max(abs(low) * 1e-3, 1e-12)
        return low - pad, high + pad
    return low, high


def metric_heatmap(
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    values: np.ndarray | Sequence[Sequence[float]],
    metric: str,
    title: str | None = None,
    row_title: str = "prompt type",
    col_title: str = "condition",
) -> Figure:
    """Heatmap rows x columns -> metric (study 1: prompt_type x layer -> quality); NaN cells blank."""
    data = np.asarray(values, dtype=float)
    cols, rows = [short_label(c) for c in col_labels], [short_label(r) for r in row_labels]
    title = title or f"{metric}: {row_title} x {col_title}"
    size = _size(len(cols), len(rows), cell=0.8, col_labels=cols, row_labels=rows, title=title)
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    low, high = _limits(data)
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", aspect="auto", vmin=low, vmax=high)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(col_title)
    ax.set_ylabel(row_title)
    _annotate(ax, data, image)
    bar = fig.colorbar(image, ax=ax, label=metric)
    bar.formatter.set_useOffset(False)
    ax.set_title(title)
    return fig


def pareto_front(costs: Sequence[float], qualities: Sequence[float], higher_is_better: bool = True) -> list[int]:
    """Indices of points no other point beats on both cost (lower) and quality, by cost."""
    points = [
        (c, q if higher_is_better else -q, i)
        for i, (c, q) in enumerate(zip(costs, qualities))
        if np.isfinite(c) and np.isfinite(q)
    ]
    front: list[int] = []
    best = -np.inf
    for _cost, quality, index in sorted(points, key=lambda p: (p[0], -p[1])):
        if quality > best:
            front.append(index)
            best = quality
    return front


def pareto_figure(
    shifts: Sequence[float],
    steps: Sequence[int],
    seconds: Sequence[float],
    quality: Sequence[float],
    metric: str,
    higher_is_better: bool = True,
) -> Figure:
    """Study 4: seconds per image vs quality, one line per shift (ordered by steps), Pareto points ringed."""
    fig = Figure(figsize=(7.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    for shift in sorted(set(shifts)):
        idx = sorted((i for i, s in enumerate(shifts) if s == shift), key=lambda i: steps[i])
        ax.plot([seconds[i] for i in idx], [quality[i] for i in idx], "o-", label=f"shift={shift:g}", alpha=0.8)
        for i in idx:
            ax.annotate(str(steps[i]), (seconds[i], quality[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = pareto_front(seconds, quality, higher_is_better)
    ax.plot([seconds[i] for i in front], [quality[i] for i in front], "k--", lw=1, label="Pareto front")
    ax.scatter(
        [seconds[i] for i in front], [quality[i] for i in front], s=140, facecolors="none", edgecolors="red", lw=1.5
    )
    ax.set_xlabel("seconds per image")
    ax.set_ylabel(f"{metric} ({'higher' if higher_is_better else 'lower'} is better)")
    ax.set_title("Shift x steps: quality-speed Pareto front (labels = steps)")
    ax.legend(fontsize=8)
    return fig


def compression_curve_figure(curves: Mapping[str, Sequence[tuple[float, float, float, float]]], metric: str) -> Figure:
    """Q5.6: compression ratio vs quality per mode; each point (ratio, mean, ci_low, ci_high)."""
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for mode, points in sorted(curves.items()):
        pts = sorted(points)
        x = np.array([p[0] for p in pts])
        y = np.array([p[1] for p in pts])
        err = np.array([[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]])
        ax.errorbar(x, y, yerr=np.nan_to_num(err), fmt="o-", capsize=3, label=str(mode))
    ax.set_xlabel("compression ratio (target tokens / max length)")
    ax.set_ylabel(metric)
    ax.set_title("Quality vs compression ratio per mode (95% CI)")
    ax.legend(fontsize=8)
    return fig


def cosine_matrix_figure(names: Sequence[str], matrix: np.ndarray | Sequence[Sequence[float]]) -> Figure:
    """Q1.4 / Q2.6: condition x condition cosine similarity of the caption embeddings."""
    data = np.asarray(matrix, dtype=float)
    labels = [short_label(n) for n in names]
    fig = Figure(
        figsize=_size(len(labels), len(labels), cell=0.7, base=(3.5, 3.0), col_labels=labels, row_labels=labels,
                      title="Embedding cosine similarity between conditions"),
        layout="constrained",
    )
    ax = fig.add_subplot()
    off_diagonal = data.copy()
    np.fill_diagonal(off_diagonal, np.nan)  # the diagonal is 1 by definition: scale to what differs
    low, high = _limits(off_diagonal if np.isfinite(off_diagonal).any() else data)
    image = ax.imshow(np.ma.masked_invalid(data), cmap="magma", vmin=low, vmax=high)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(labels)), labels)
    _annotate(ax, data, image, fontsize=7)
    bar = fig.colorbar(image, ax=ax, label="cosine similarity (diagonal = 1)", extend="max")
    bar.formatter.set_useOffset(False)
    ax.set_title("Embedding cosine similarity between conditions")
    return fig


def drift_figure(
    layer_names: Sequence[str], drift: Mapping[str, Sequence[float]], ylabel: str = "cosine similarity to refiner input"
) -> Figure:
    """Q3.2: embedding drift per layer, one line per series (e.g. condition or prompt type)."""
    fig = Figure(figsize=(max(5.0, 0.6 * len(layer_names) + 3), 4.0), layout="constrained")
    ax = fig.add_subplot()
    for label, values in drift.items():
        ax.plot(range(len(values)), list(values), "o-", label=str(label))
    ax.set_xticks(range(len(layer_names)), [short_label(n) for n in layer_names], rotation=30, ha="right")
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title("Embedding drift per layer")
    if len(drift) > 1:
        ax.legend(fontsize=8)
    return fig


def condition_bar_figure(
    conditions: Sequence[str],
    means: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    metric: str,
    control: str | None = None,
) -> Figure:
    """Mean and 95% CI per condition; the control bar is hatched."""
    labels = [short_label(c) for c in conditions]
    title = f"{metric} per condition (95% bootstrap CI)"
    fig = Figure(figsize=_size(len(labels), 0, cell=0.5, base=(2.5, 4.0), col_labels=labels, title=title), layout="constrained")
    ax = fig.add_subplot()
    m = np.asarray(means, dtype=float)
    err = np.nan_to_num(np.array([m - np.asarray(lows, float), np.asarray(highs, float) - m]))
    bars = ax.bar(range(len(conditions)), m, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
    for bar, name in zip(bars, conditions):
        if name == control:
            bar.set_hatch("//")
            bar.set_color("tab:gray")
    ax.set_xticks(range(len(conditions)), [short_label(c) for c in conditions], rotation=45, ha="right", rotation_mode="anchor")
    ax.set_ylabel(metric)
    ax.set_title(title)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG (creating the folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def png_pixels(path: str | Path) -> np.ndarray:
    """A saved figure's pixels, (H, W, 3) uint8, for TensorBoard's `add_image(..., dataformats="HWC")`.

    Why not `add_figure`: it draws the figure a second time (at its own dpi), and drawing is what a
    figure costs: a 56-condition heatmap takes ~0.9 s to save and another ~0.6 s for TensorBoard
    (benchmarks/NOTES.md). Decoding the PNG just written takes milliseconds, and TensorBoard then
    shows exactly the file in figures/."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
