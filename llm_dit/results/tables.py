"""Tables computed from a ``RunData``: per-condition estimates and the figure inputs.

Shared by the report and the TensorBoard callback so both show the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from llm_dit.results import figures
from llm_dit.results.run_data import RunData, direction, encoding_value, meta
from llm_dit.results.stats import Estimate, cluster_bootstrap_mean, paired_difference

# The world's exact, weight-free scene score first: where a study has it, it is the measured truth.
QUALITY_PREFERENCE = ("world_facts", "clip_score", "clip_score_random_init", "detail_score", "detail_score_random_init")
FID_NAMES = ("fid", "fid_random_init")


@dataclass(frozen=True)
class ConditionRow:
    condition: str
    estimate: Estimate
    difference: Estimate | None  # vs control, paired by (prompt_index, seed); None for the control


def quality_metric(run: RunData, preferred: str | None = None) -> str | None:
    """The per-item metric used as "quality" in figures: ``preferred`` or the first available."""
    available = run.item_metrics()
    if preferred in available:
        return preferred
    return next((m for m in QUALITY_PREFERENCE if m in available), None)


def condition_table(run: RunData, metric: str, n_boot: int = 2000, seed: int = 0) -> list[ConditionRow]:
    """Mean [CI] per condition and paired difference to the control (cluster bootstrap over prompts)."""
    control = run.control
    control_cells = run.cells(metric, control) if control else {}
    out = []
    for condition in run.conditions:
        cells = run.cells(metric, condition)
        if not cells:
            continue
        diff = None if condition == control else paired_difference(cells, control_cells, n_boot, seed)
        out.append(ConditionRow(condition, cluster_bootstrap_mean(cells, n_boot, seed), diff))
    return out


def per_prompt_table(run: RunData, name: str, n_boot: int = 2000, seed: int = 0) -> list[ConditionRow]:
    """Like ``condition_table`` for a per-prompt set metric (LPIPS diversity), pairing by prompt."""
    entries = run.set_metric(name)
    control = entries.get(run.control or "", {}).get("per_prompt") or {}
    out = []
    for condition in run.conditions:
        per_prompt = (entries.get(condition) or {}).get("per_prompt") or {}
        if not per_prompt:
            continue
        diff = None if condition == run.control else paired_difference(per_prompt, control, n_boot, seed)
        out.append(ConditionRow(condition, cluster_bootstrap_mean(per_prompt, n_boot, seed), diff))
    return out


def prompt_type_table(run: RunData, metric: str) -> tuple[list[str], list[str], np.ndarray] | None:
    """(prompt types, conditions, mean matrix) for the heatmap; None without prompt types."""
    types = sorted({str(r["prompt_type"]) for r in run.rows if r.get("prompt_type")})
    if not types:
        return None
    conditions = run.conditions
    values = np.full((len(types), len(conditions)), np.nan)
    for c, condition in enumerate(conditions):
        for t, prompt_type in enumerate(types):
            cells = run.cells(metric, condition, lambda r, pt=prompt_type: str(r.get("prompt_type")) == pt)
            if cells:
                values[t, c] = float(np.mean(list(cells.values())))
    return types, conditions, values


def condition_quality(run: RunData, preferred: str | None = None) -> tuple[str, dict[str, float], bool] | None:
    """(metric, condition -> value, higher_is_better): FID when computed, else the item quality mean."""
    for name in FID_NAMES:
        values = {c: e["value"] for c, e in run.set_metric(name).items() if e.get("value") is not None}
        if values:
            return name, values, False
    metric = quality_metric(run, preferred)
    if metric is None:
        return None
    means = {c: float(np.mean(list(v.values()))) for c in run.conditions if (v := run.cells(metric, c))}
    return metric, means, direction(metric) >= 0


def condition_seconds(run: RunData) -> dict[str, float]:
    """Seconds per image per condition: the rows' mean without warm-up rows, else the timing summary.

    Machine-dependent: for ranking conditions of one run on one machine only.
    """
    out = {}
    summary = run.set_metric("seconds_per_image")
    for condition in run.conditions:
        cells = run.cells("seconds", condition)  # warm-up rows left out
        if cells:
            out[condition] = float(np.mean(list(cells.values())))
        elif (summary.get(condition) or {}).get("value") is not None and not _has_seconds(run, condition):
            out[condition] = float(summary[condition]["value"])
    return out


def _has_seconds(run: RunData, condition: str) -> bool:
    """Rows with a time (warm-up or not): then the summary, which may hold warm-up, is not used."""
    return any(isinstance(r.get("seconds"), (int, float)) for r in run.rows_of(condition))


def pareto_points(run: RunData, preferred: str | None = None) -> tuple[list, list, list, list, str, bool] | None:
    """Inputs of ``figures.pareto_figure``: one point per condition with shift, steps, seconds, quality."""
    quality = condition_quality(run, preferred)
    seconds = condition_seconds(run)
    if quality is None:
        return None
    metric, values, higher = quality
    points = []
    for condition in run.conditions:
        sampler = run.settings(condition).sampler
        shift, steps = sampler.get("shift"), sampler.get("steps")
        if condition in values and condition in seconds and shift is not None and steps is not None:
            points.append((float(shift), int(steps), seconds[condition], values[condition]))
    if len(points) < 2 or len({(p[0], p[1]) for p in points}) < 2:
        return None
    shifts, steps, secs, quals = (list(x) for x in zip(*points))
    return shifts, steps, secs, quals, metric, higher


def compression_ratio(row: dict[str, Any], default_max_length: int = 512) -> float | None:
    """target_tokens / max_length of a long-prompt row (None when the prompt has no target length)."""
    target = meta(row, "target_tokens")
    if target is None:
        return None
    max_length = meta(row, "max_length") or encoding_value(row, "max_length") or default_max_length
    return float(target) / float(max_length)


def compression_mode(run: RunData, condition: str, mode_key: str = "long_prompt_mode") -> str:
    """The condition's recorded long-prompt mode (its name only when no mode is recorded)."""
    mode = run.settings(condition).encoding.get(mode_key)
    return str(mode) if mode is not None else condition


def compression_curves(
    run: RunData, metric: str, mode_key: str = "long_prompt_mode", n_boot: int = 1000, seed: int = 0
) -> dict[str, list[tuple[float, float, float, float]]]:
    """Q5.6: per condition (labelled by its mode): [(ratio, mean, ci_low, ci_high)], cluster bootstrap."""
    curves: dict[str, list[tuple[float, float, float, float]]] = {}
    for condition in run.conditions:
        by_ratio: dict[float, dict[tuple[int, int], float]] = {}
        for row in run.rows_of(condition):
            ratio = compression_ratio(row)
            value = row.get(f"metric.{metric}")
            if ratio is not None and isinstance(value, (int, float)) and math.isfinite(value):
                by_ratio.setdefault(round(ratio, 4), {})[(int(row["prompt_index"]), int(row["seed"]))] = float(value)
        if by_ratio:
            label = compression_mode(run, condition, mode_key)
            label = label if label == condition else f"{condition} ({label})"
            points = []
            for ratio, values in sorted(by_ratio.items()):
                est = cluster_bootstrap_mean(values, n_boot, seed)
                points.append((ratio, est.mean, est.low, est.high))
            curves[label] = points
    return curves


def study_figures(run: RunData, quality: str | None, heatmap_metrics: list[str], **curve_options: Any) -> dict[str, Any]:
    """The study-level figures TensorBoard and report.md both show, by name.

    Heatmaps prompt type x condition, the shift-steps Pareto front, compression
    curves, the cosine matrix and refiner drift: each only where the run has its data.
    `curve_options` go to `compression_curves` (bootstrap size and seed).
    """
    made: dict[str, Any] = {}
    for metric in dict.fromkeys(heatmap_metrics):
        table = prompt_type_table(run, metric)
        if table is not None:
            made[f"heatmap_prompt_type_{metric}"] = figures.metric_heatmap(*table, metric=metric)
    pareto = pareto_points(run, quality)
    if pareto is not None:
        made["pareto_shift_steps"] = figures.pareto_figure(*pareto)
    if quality and (curves := compression_curves(run, quality, **curve_options)):
        made[f"compression_{quality}"] = figures.compression_curve_figure(curves, quality)
    cosine = run.analysis.get("cosine_matrix") or {}
    if cosine.get("names") and figures.varies(cosine.get("matrix") or []):  # one shared encoding: all 1.0
        made["cosine_matrix"] = figures.cosine_matrix_figure(cosine["names"], cosine["matrix"])
    drift = run.analysis.get("drift") or {}
    if drift.get("layers") and drift.get("series"):
        made["drift"] = figures.drift_figure(drift["layers"], drift["series"])
    return made
