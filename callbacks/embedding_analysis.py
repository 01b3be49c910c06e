"""What the conditions do to the caption features themselves, before any image exists.

Several sub-questions are about embeddings, not images: how similar different
encoder layers are (Q1.4), how far a think block moves the conditioning
(Q2.6, the think study's semantic_drift), what a think block or system prompt
costs in tokens (Q2.5, Q7.1), and how much the context refiner changes its
input (Q3.2). This module answers them in one file, `embedding_analysis.json`
in the run folder, read by the report and the TensorBoard review:

    cosine_matrix  {names, matrix}: condition x condition cosine of mean-pooled
                   caption features, averaged over prompts (for the hidden-layer
                   study this is the layer x layer matrix).
    user_token_cosine {names, matrix}: token-wise cosine over the user-prompt rows,
                   for pairs whose user tokens are identical (None elsewhere).
    drift_vs_control: per condition, cosine to the control and semantic_drift = 1 - cosine.
    segments:      per condition and segment (system/user/think/assistant/template):
                   mean token count and mean row norm, plus the cosine between the
                   mean think row and the mean user row.
    token_counts:  per condition: template tokens, rows the DiT received, extra
                   tokens over the control.
    drift:         {layers, series}: context-refiner drift per block and condition,
                   when the module recorded it (model.record_refiner_drift).

Two ways to fill it: `EmbeddingAnalysis`, a callback that keeps the features
each predict batch already computed, or `analyze_embeddings(encoder, study)`,
which runs only the text encoder (no DiT, no VAE) and so works anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback

ANALYSIS_FILE = "embedding_analysis.json"
FIGURE_FILE = "figures/cosine_matrix.png"
USER, THINK = "user", "think"
REFINER_TARGET = "context_refiner"
# Token-wise comparison keeps the user rows of every (prompt, condition) in memory:
# bounded so a long-prompt study (thousands of rows each) does not hold gigabytes.
MAX_USER_ROWS = 512


@dataclass
class EmbeddingRecord:
    """What the analysis keeps of one (prompt, condition) encoding: small summaries, not the features.

    Attributes:
        user_rows: the user-prompt rows, kept only when uncompressed (rows == tokens)
            and at most MAX_USER_ROWS, for token-wise comparison between conditions.
        segment_tokens: template tokens per segment label.
        segment_norms: mean L2 norm of the rows of each segment.
        think_user_cosine: cosine of the mean think row and the mean user row (None without think rows).
    """

    prompt_index: int
    condition: str
    mean: torch.Tensor
    num_tokens: int
    num_rows: int
    compressed: bool
    user_token_ids: tuple[int, ...] = ()
    user_rows: torch.Tensor | None = None
    segment_tokens: dict[str, int] = field(default_factory=dict)
    segment_norms: dict[str, float] = field(default_factory=dict)
    think_user_cosine: float | None = None

    @property
    def key(self) -> tuple[int, str]:
        return self.prompt_index, self.condition


def make_record(embeddings: torch.Tensor, encoding: Any, prompt_index: int, condition: str) -> EmbeddingRecord:
    """Summarize one encoding. `encoding` is an EncodedPrompt (or anything with its fields)."""
    rows = embeddings.detach().float().cpu()
    segments = list(getattr(encoding, "segments", []) or [])
    labels = _row_labels(encoding, rows.shape[0])
    token_ids = [int(i) for i in getattr(encoding, "token_ids", [])]
    user_ids = tuple(i for i, s in zip(token_ids, segments) if s == USER)
    compressed = bool(getattr(encoding, "compressed", False))
    record = EmbeddingRecord(
        prompt_index=prompt_index,
        condition=condition,
        mean=rows.mean(dim=0),
        num_tokens=int(getattr(encoding, "num_tokens", len(token_ids) or rows.shape[0])),
        num_rows=int(rows.shape[0]),
        compressed=compressed,
        user_token_ids=user_ids,
        segment_tokens={label: segments.count(label) for label in dict.fromkeys(segments)},
    )
    if labels is None:
        return record
    by_label = {label: rows[[i for i, l in enumerate(labels) if l == label]] for label in dict.fromkeys(labels)}
    record.segment_norms = {label: float(part.norm(dim=-1).mean()) for label, part in by_label.items()}
    if THINK in by_label and USER in by_label:
        record.think_user_cosine = _cosine(by_label[THINK].mean(0), by_label[USER].mean(0))
    user_rows = by_label.get(USER)
    if not compressed and user_rows is not None and user_rows.shape[0] == len(user_ids) <= MAX_USER_ROWS:
        record.user_rows = by_label[USER].clone()
    return record


def _row_labels(encoding: Any, num_rows: int) -> list[str] | None:
    """A segment label per embedding row, when the encoding says (row_segments, or segments if uncompressed)."""
    for name in ("row_segments", "segments"):
        labels = getattr(encoding, name, None)
        if labels is not None and len(labels) == num_rows:
            return list(labels)
    return None


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double(), b.double(), dim=-1))


# ----- summary ------------------------------------------------------------------------------


def summarize(
    records: Iterable[EmbeddingRecord],
    conditions: Sequence[str],
    control: str,
    drift: dict[str, list[list[float]]] | None = None,
) -> dict[str, Any]:
    """The JSON-able analysis of `records` (one per prompt x condition; later duplicates ignored).

    Conditions keep the study's order; those without a record are left out.
    """
    table: dict[str, dict[int, EmbeddingRecord]] = {}
    for record in records:
        table.setdefault(record.condition, {}).setdefault(record.prompt_index, record)
    names = [name for name in conditions if name in table] + sorted(set(table) - set(conditions))
    pooled = _matrix(names, table, _pooled_cosine)
    user = _matrix(names, table, _user_token_cosine)
    result = {
        "control": control,
        "conditions": names,
        "num_prompts": {name: len(table[name]) for name in names},
        "cosine_matrix": {"names": names, "matrix": pooled, "what": "cosine of mean-pooled caption features, mean over prompts"},
        "user_token_cosine": {"names": names, "matrix": user, "what": "mean token-wise cosine over identical user-prompt tokens"},
        "drift_vs_control": _versus_control(names, control, pooled, user),
        "segments": {name: _segment_summary(table[name].values()) for name in names},
        "token_counts": {name: _token_summary(table[name], table.get(control)) for name in names},
    }
    if drift:
        result["drift"] = drift_summary(drift, names)
    return result


def _matrix(names: list[str], table: dict[str, dict[int, EmbeddingRecord]], pair) -> list[list[float | None]]:
    """names x names, each cell the mean of `pair(a, b)` over shared prompts (None when none applies)."""
    size = len(names)
    matrix: list[list[float | None]] = [[None] * size for _ in range(size)]
    for i in range(size):
        for j in range(i, size):
            a, b = table[names[i]], table[names[j]]
            values = [v for p in a.keys() & b.keys() if (v := pair(a[p], b[p])) is not None]
            value = sum(values) / len(values) if values else None
            matrix[i][j] = matrix[j][i] = value
    return matrix


def _pooled_cosine(a: EmbeddingRecord, b: EmbeddingRecord) -> float:
    return _cosine(a.mean, b.mean)


def _user_token_cosine(a: EmbeddingRecord, b: EmbeddingRecord) -> float | None:
    """Mean cosine of corresponding user rows; only when both saw exactly the same user tokens."""
    if a.user_rows is None or b.user_rows is None or a.user_token_ids != b.user_token_ids or not a.user_token_ids:
        return None
    return float(F.cosine_similarity(a.user_rows.double(), b.user_rows.double(), dim=-1).mean())


def _versus_control(names: list[str], control: str, pooled: list, user: list) -> dict[str, dict[str, float | None]]:
    if control not in names:
        return {}
    c = names.index(control)
    out = {}
    for i, name in enumerate(names):
        cosine = pooled[i][c]
        out[name] = {
            "cosine_mean_pooled": cosine,
            "semantic_drift": None if cosine is None else 1.0 - cosine,
            "cosine_user_tokens": user[i][c],
        }
    return out


def _segment_summary(records: Iterable[EmbeddingRecord]) -> dict[str, Any]:
    records = list(records)
    labels = dict.fromkeys(label for r in records for label in (*r.segment_tokens, *r.segment_norms))
    summary: dict[str, Any] = {}
    for label in labels:
        counts = [r.segment_tokens.get(label, 0) for r in records]
        norms = [r.segment_norms[label] for r in records if label in r.segment_norms]
        summary[label] = {"mean_tokens": _mean(counts), "mean_norm": _mean(norms)}
    think_user = [r.think_user_cosine for r in records if r.think_user_cosine is not None]
    summary["think_user_cosine"] = _mean(think_user)
    summary["think_tokens_per_user_token"] = _ratio(summary.get(THINK, {}), summary.get(USER, {}))
    return summary


def _token_summary(records: dict[int, EmbeddingRecord], control: dict[int, EmbeddingRecord] | None) -> dict[str, Any]:
    tokens = [r.num_tokens for r in records.values()]
    summary = {
        "mean_tokens": _mean(tokens),
        "min_tokens": min(tokens),
        "max_tokens": max(tokens),
        "mean_rows": _mean([r.num_rows for r in records.values()]),
        "compressed_fraction": _mean([float(r.compressed) for r in records.values()]),
        "extra_tokens_vs_control": None,
    }
    if control:
        shared = records.keys() & control.keys()
        summary["extra_tokens_vs_control"] = _mean([records[p].num_tokens - control[p].num_tokens for p in shared])
    return summary


def drift_summary(drift: dict[str, list[list[float]]], names: Sequence[str]) -> dict[str, Any]:
    """{layers, series}: per condition the mean per-block cosine (block input vs output) over items."""
    series: dict[str, list[float]] = {}
    for name in [n for n in names if n in drift] + sorted(set(drift) - set(names)):
        rows = [row for row in drift[name] if row]
        if not rows:
            continue
        depth = max(len(row) for row in rows)
        series[name] = [_mean([row[k] for row in rows if k < len(row)]) for k in range(depth)]
    depth = max((len(v) for v in series.values()), default=0)
    return {"layers": [f"{REFINER_TARGET}.{k}" for k in range(depth)], "series": series}


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def _ratio(think: dict[str, Any], user: dict[str, Any]) -> float | None:
    if not think.get("mean_tokens") or not user.get("mean_tokens"):
        return None
    return think["mean_tokens"] / user["mean_tokens"]


# ----- text-encoder-only analysis ------------------------------------------------------------


def analyze_embeddings(encoder: Any, study: Any) -> dict[str, Any]:
    """Encode every (prompt, condition) of `study` with `encoder` alone and summarize.

    `encoder` is a ZImageTextEncoder (`encode(prompts, options) -> list[EncodedPrompt]`).
    Conditions that share encoding options (sampler sweeps, surgery) are encoded once.
    Prompt transforms apply, as in the study's items.
    """
    records = encode_records(encoder, _first_per_prompt(study.items()))
    result = summarize(records, [c.name for c in study.resolved_conditions()], study.control)
    return {"study": study.name, "kind": study.kind, "source": "text encoder only", **result}


def encode_records(encoder: Any, items: Sequence[Any]) -> list[EmbeddingRecord]:
    """One record per item; items grouped by encoding options so each group is one `encode` call."""
    groups: dict[Any, list[Any]] = {}
    for item in items:
        groups.setdefault(item.encoding, []).append(item)
    records = []
    for options, group in groups.items():
        prompts = list(dict.fromkeys(item.prompt for item in group))
        encoded = dict(zip(prompts, encoder.encode(prompts, options)))
        for item in group:
            found = encoded[item.prompt]
            records.append(make_record(found.embeddings, found, item.prompt_index, item.condition))
    return records


def _first_per_prompt(items: Iterable[Any]) -> list[Any]:
    """Seeds do not change the encoding: keep one item per (prompt, condition)."""
    first: dict[tuple[int, str], Any] = {}
    for item in items:
        first.setdefault((item.prompt_index, item.condition), item)
    return list(first.values())


def write_analysis(result: dict[str, Any], folder: Path) -> tuple[Path, Any]:
    """Write embedding_analysis.json and figures/cosine_matrix.png; return (json path, figure or None)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ANALYSIS_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(result, indent=2))
    temporary.replace(path)
    figure = None
    cosine = result.get("cosine_matrix") or {}
    if cosine.get("names"):
        figure = cosine_figure(cosine["names"], cosine["matrix"])
        (folder / FIGURE_FILE).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(folder / FIGURE_FILE, dpi=110)
    return path, figure


def cosine_figure(names: Sequence[str], matrix: Sequence[Sequence[float | None]]) -> Any:
    """The shared figure builder (callbacks.figures), with None cells as NaN."""
    from callbacks.figures import cosine_matrix_figure

    values = [[float("nan") if v is None else v for v in row] for row in matrix]
    return cosine_matrix_figure(list(names), values)


# ----- the callback ------------------------------------------------------------------------


class EmbeddingAnalysis(Callback):
    """Collects caption-feature summaries during predict and writes embedding_analysis.json at the end.

    Items resumed from an earlier run carry no features; with `fill_resumed`
    rank 0 encodes those (prompt, condition) pairs again with the module's
    encoder, so a resumed run still gets the full analysis.

    Args:
        fill_resumed: re-encode (text encoder only) the pairs every rank missed.
        log_figure: log the cosine matrix to TensorBoard (rank 0).
    """

    def __init__(self, fill_resumed: bool = True, log_figure: bool = True) -> None:
        super().__init__()
        self.fill_resumed = fill_resumed
        self.log_figure = log_figure
        self._records: dict[tuple[int, str], EmbeddingRecord] = {}
        self._drift: dict[str, list[list[float]]] = {}

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._records, self._drift = {}, {}

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        embeddings = getattr(outputs, "embeddings", None) or []
        encodings = getattr(outputs, "encodings", None) or []
        drift = (getattr(outputs, "extras", None) or {}).get("refiner_drift") or []
        for index, item in enumerate(outputs.items):
            if index < len(drift) and drift[index]:
                self._drift.setdefault(item.condition, []).append(list(drift[index]))
            key = (item.prompt_index, item.condition)
            if key in self._records or index >= len(embeddings) or embeddings[index] is None:
                continue
            if index < len(encodings) and encodings[index] is not None:
                self._records[key] = make_record(embeddings[index], encodings[index], *key)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        records = _merge(_gather(list(self._records.values())))
        drift = _merge_drift(_gather(self._drift))
        if not trainer.is_global_zero:
            return
        study = getattr(getattr(trainer, "datamodule", None), "study", None)
        if self.fill_resumed:
            records += self._encode_missing(trainer, pl_module, {r.key for r in records})
        if not records:
            return
        conditions = [c.name for c in study.resolved_conditions()] if study is not None else []
        control = study.control if study is not None else "control"
        result = summarize(records, conditions, control, drift)
        header = {"study": getattr(study, "name", None), "kind": getattr(study, "kind", None), "source": "predict"}
        from llm_dit.run import run_dir

        _, figure = write_analysis({**header, **result}, run_dir(trainer))
        self._log(trainer, result, figure)

    def _encode_missing(self, trainer: L.Trainer, pl_module: L.LightningModule, have: set) -> list[EmbeddingRecord]:
        items = getattr(getattr(trainer, "datamodule", None), "items", None) or []
        missing = [item for item in _first_per_prompt(items) if (item.prompt_index, item.condition) not in have]
        encoder = getattr(pl_module, "encoder", None)
        if not missing or encoder is None:
            return []
        return encode_records(encoder, missing)

    def _log(self, trainer: L.Trainer, result: dict[str, Any], figure: Any) -> None:
        logger = trainer.logger
        if logger is None or not hasattr(logger, "experiment"):
            return
        experiment = logger.experiment
        if self.log_figure and figure is not None and hasattr(experiment, "add_figure"):
            experiment.add_figure("embedding_analysis/cosine_matrix", figure, global_step=0)
        for name, values in result["drift_vs_control"].items():
            if values["semantic_drift"] is not None and hasattr(experiment, "add_scalar"):
                experiment.add_scalar(f"embedding_analysis/semantic_drift/{name}", values["semantic_drift"], 0)


def _gather(local: Any) -> list[Any]:
    """Every rank's `local` (just `[local]` outside a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [local]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, local)
    return out


def _merge(parts: list[list[EmbeddingRecord]]) -> list[EmbeddingRecord]:
    merged: dict[tuple[int, str], EmbeddingRecord] = {}
    for part in parts:
        for record in part:
            merged.setdefault(record.key, record)
    return list(merged.values())


def _merge_drift(parts: list[dict[str, list[list[float]]]]) -> dict[str, list[list[float]]]:
    merged: dict[str, list[list[float]]] = {}
    for part in parts:
        for name, rows in part.items():
            merged.setdefault(name, []).extend(rows)
    return merged
