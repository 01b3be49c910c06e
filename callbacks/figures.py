"""Pure figure builders: data in, ``matplotlib.figure.Figure`` out.

No pyplot state: figures are made with ``Figure()`` so they can be built in a
callback on a headless GPU node, saved as PNG and handed to TensorBoard
without leaking open figures. The TensorBoard callback and the report both use
these functions, so a figure looks the same in both places.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def _size(n_cols: int, n_rows: int, cell: float = 0.6, base: tuple[float, float] = (3.0, 2.0)) -> tuple[float, float]:
    return (min(base[0] + cell * n_cols, 24.0), min(base[1] + cell * n_rows, 18.0))


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
    fig = Figure(figsize=_size(len(col_labels), len(row_labels)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(col_labels)), [str(c) for c in col_labels], rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)), [str(r) for r in row_labels])
    ax.set_xlabel(col_title)
    ax.set_ylabel(row_title)
    finite = data[np.isfinite(data)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (r, c), v in np.ndenumerate(data):
        if np.isfinite(v):
            ax.text(c, r, f"{v:.3g}", ha="center", va="center", fontsize=8, color="black" if v > middle else "white")
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_title(title or f"{metric}: {row_title} x {col_title}")
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
    fig = Figure(figsize=_size(len(names), len(names), cell=0.7, base=(3.5, 3.0)), layout="constrained")
    ax = fig.add_subplot()
    low = float(np.nanmin(data)) if np.isfinite(data).any() else 0.0
    image = ax.imshow(np.ma.masked_invalid(data), cmap="magma", vmin=min(0.0, low), vmax=1.0)
    ax.set_xticks(range(len(names)), [str(n) for n in names], rotation=45, ha="right")
    ax.set_yticks(range(len(names)), [str(n) for n in names])
    for (r, c), v in np.ndenumerate(data):
        if np.isfinite(v):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    fig.colorbar(image, ax=ax, label="cosine similarity")
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
    ax.set_xticks(range(len(layer_names)), [str(n) for n in layer_names], rotation=30, ha="right")
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
    fig = Figure(figsize=(max(5.0, 0.5 * len(conditions) + 2), 4.0), layout="constrained")
    ax = fig.add_subplot()
    m = np.asarray(means, dtype=float)
    err = np.nan_to_num(np.array([m - np.asarray(lows, float), np.asarray(highs, float) - m]))
    bars = ax.bar(range(len(conditions)), m, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
    for bar, name in zip(bars, conditions):
        if name == control:
            bar.set_hatch("//")
            bar.set_color("tab:gray")
    ax.set_xticks(range(len(conditions)), [str(c) for c in conditions], rotation=45, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per condition (95% bootstrap CI)")
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG (creating the folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
