"""A run directory as data: results rows, the resolved study, set metrics, analyses.

``RunData`` is built either from the files of a finished run (``load_run``) or,
by the TensorBoard callback, from rows synced at predict end: both hand the
same row format (results.jsonl's) to the tables and figures.

Files read from a run directory:

* ``results.jsonl``: one row per image (callbacks.writer); numbers in
  ``metric.<name>`` columns, prompt metadata in ``metadata`` (or ``meta.<key>``);
* ``study.json``: name, kind, control, baseline encoding / sampler, conditions
  [{name, encoding, sampler, surgery, prompt_transform, variables}] (see
  ``llm_dit.results.settings`` for how a condition's settings are read);
* ``environment.json``: weights, transformer fingerprint, package versions;
* ``set_metrics.json``: ``{metric: {"kind", "conditions": {name: {"value", "n",
  "per_prompt"?}}, "info"}}`` from the metric callbacks;
* ``embedding_analysis.json`` (optional, written by the embedding analysis):
  ``{"cosine_matrix": {"names": [...], "matrix": [[...]]},
  "drift": {"layers": [...], "series": {label: [value per layer]}}}``.

A row with ``"warmup": true`` came from the first batch of its process
(compilation, allocator warm-up): its timing is left out of timing comparisons.
Rows without the flag count as timed normally.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from llm_dit.results.table import RESULTS, read_rows  # one reader for the results table, torn lines and all
from llm_dit.results.settings import ConditionSettings, condition_settings
from llm_dit.world.scene import STYLES
from llm_dit.world.score import FACT_KINDS

SET_METRICS = "set_metrics.json"
ANALYSIS = "embedding_analysis.json"
ENVIRONMENT = "environment.json"
#: Wall-clock columns: machine-dependent, never starred, warm-up rows left out.
TIMING_METRICS = ("seconds", "seconds_per_image")
_ELEMENT = re.compile(r"^clip_element_\d+")

#: +1 higher is better, -1 lower is better, 0 neither (descriptive only).
DIRECTIONS = {
    "clip_score": 1,
    "clip_score_encoded": 1,
    "clip_elements_mean": 1,
    "clip_element": 1,
    "clip_probe": 1,
    "fid": -1,
    "lpips_diversity": 1,
    "detail_score": 0,
    "seconds": -1,
    "seconds_per_image": -1,
    "peak_memory_mb": -1,
    "caption_tokens": 0,
    "num_tokens": 0,
    # The synthetic world's exact scene scores (callbacks/scene_score.py): share of facts that hold.
    "world_all": 1,
    "world_facts": 1,
    **{f"world_{kind}": 1 for kind in FACT_KINDS},
    # Share of detected objects with one fill: higher = more of the fill a style adapter targets.
    **{f"world_fill_{style}": 1 for style in STYLES},
}


def base_name(metric: str) -> str:
    """Metric name without the random-init label and per-element / per-probe index."""
    name = metric.removesuffix("_random_init")
    for prefix in ("clip_element_", "clip_probe_"):
        if name.startswith(prefix):
            return prefix.rstrip("_")
    return name


def direction(metric: str) -> int:
    return DIRECTIONS.get(base_name(metric), 0)


@dataclass
class RunData:
    """Rows (one per image) plus the run's study record and set metrics."""

    rows: list[dict[str, Any]]
    study: dict[str, Any] = field(default_factory=dict)
    set_metrics: dict[str, Any] = field(default_factory=dict)
    analysis: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    environment: dict[str, Any] = field(default_factory=dict)

    # -- study ------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.study.get("name") or (self.rows[0].get("study") if self.rows else "") or "run")

    @property
    def kind(self) -> str:
        return str(self.study.get("kind") or "custom")

    @property
    def conditions(self) -> list[str]:
        """Condition names: the study's order, then any others in row order."""
        names = [c["name"] for c in self.study.get("conditions", []) if isinstance(c, dict) and "name" in c]
        ordered = sorted(self.rows, key=lambda r: r.get("condition_index", math.inf))
        for row in ordered:
            if row["condition"] not in names:
                names.append(row["condition"])
        present = {r["condition"] for r in self.rows} | set(self._set_condition_names())
        return [n for n in names if n in present]

    @property
    def control(self) -> str | None:
        control = self.study.get("control")
        conditions = self.conditions
        return control if control in conditions else (conditions[0] if conditions else None)

    def variables(self, condition: str) -> dict[str, Any]:
        for spec in self.study.get("conditions", []):
            if isinstance(spec, dict) and spec.get("name") == condition and spec.get("variables") is not None:
                return dict(spec["variables"])
        row = next((r for r in self.rows if r["condition"] == condition), {})
        return {k[4:]: v for k, v in row.items() if k.startswith("var.")}

    @cached_property
    def _settings(self) -> dict[str, ConditionSettings]:
        return condition_settings(self.rows, self.study, self.conditions)

    def settings(self, condition: str) -> ConditionSettings:
        """What ``condition`` ran with (encoding, sampler, surgery, prompt transform): see settings.py."""
        return self._settings[condition]

    # -- columns ------------------------------------------------------------------
    def item_metrics(self, include_elements: bool = False) -> list[str]:
        """Per-item metrics (``metric.<name>`` columns with a number), in first-seen order."""
        names: dict[str, None] = {}
        for row in self.rows:
            for key, value in row.items():
                if key.startswith("metric.") and _number(value):
                    names[key[7:]] = None
        return [n for n in names if include_elements or not _ELEMENT.match(n)]

    def rows_of(self, condition: str, where: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["condition"] == condition and (where is None or where(r))]

    def cells(
        self, metric: str, condition: str, where: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[tuple[int, int], float]:
        """(prompt_index, seed) -> value of ``metric`` ("seconds", "num_tokens" or an item metric).

        Timing columns leave warm-up rows out.
        """
        out = {}
        if metric in TIMING_METRICS:
            where = _and_not_warmup(where)
        for row in self.rows_of(condition, where):
            value = value_of(row, metric)
            if value is not None:
                out[(int(row["prompt_index"]), int(row["seed"]))] = value
        return out

    def set_metric(self, name: str) -> dict[str, dict[str, Any]]:
        """``{condition: {"value", "n", ...}}`` of a set metric (FID, LPIPS diversity), or {}."""
        entry = self.set_metrics.get(name) or {}
        return dict(entry.get("conditions") or {})

    def set_metric_names(self, kinds: tuple[str, ...] = ("set", "per_prompt_mean")) -> list[str]:
        return [n for n, e in self.set_metrics.items() if isinstance(e, dict) and e.get("kind", "set") in kinds]

    def _set_condition_names(self) -> list[str]:
        return [c for e in self.set_metrics.values() if isinstance(e, dict) for c in (e.get("conditions") or {})]


def is_warmup(row: dict[str, Any]) -> bool:
    """The row came from its process's first batch (absent flag: not warm-up)."""
    return bool(row.get("warmup", False))


def _and_not_warmup(where: Callable[[dict[str, Any]], bool] | None) -> Callable[[dict[str, Any]], bool]:
    return lambda row: not is_warmup(row) and (where is None or where(row))


def value_of(row: dict[str, Any], metric: str) -> float | None:
    """A numeric cell of a row: plain columns (seconds, num_tokens...) or ``metric.<name>``."""
    value = row.get(metric) if metric in row else row.get(f"metric.{metric}")
    return float(value) if _number(value) else None


def meta(row: dict[str, Any], key: str) -> Any:
    """A prompt metadata value (``metadata`` dict or a ``meta.<key>`` column)."""
    return (row.get("metadata") or {}).get(key, row.get(f"meta.{key}"))


def encoding_value(row: dict[str, Any], key: str) -> Any:
    """An encoding option of the row's condition (``var.<key>`` wins over the ``encoding`` dict)."""
    if f"var.{key}" in row:
        return row[f"var.{key}"]
    return (row.get("encoding") or {}).get(key)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def load_run(run_dir: str | Path) -> RunData:
    """Read results.jsonl, study.json, set_metrics.json and embedding_analysis.json of a run."""
    run_dir = Path(run_dir)
    if not (run_dir / RESULTS).is_file():
        raise FileNotFoundError(f"{run_dir / RESULTS} not found: is {run_dir} a finished predict run directory?")
    return RunData(
        rows=read_rows(run_dir / RESULTS),
        study=read_json(run_dir / "study.json") or {},
        set_metrics=read_json(run_dir / SET_METRICS) or {},
        analysis=read_json(run_dir / ANALYSIS) or {},
        run_dir=run_dir,
        environment=read_json(run_dir / ENVIRONMENT) or {},
    )
