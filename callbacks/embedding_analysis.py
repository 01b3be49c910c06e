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
                   when the module recorded it (model.predict.record_refiner_drift).

Two ways to fill it: `EmbeddingAnalysis`, a callback, or
`analyze_embeddings(encoder, study)`, which runs only the text encoder (no DiT,
no VAE) and so works anywhere.

The callback never summarizes "what this run saw". When an item is generated
it stores that (prompt, condition)'s summary (pooled features, user rows,
segment statistics) in a sidecar file, `embeddings/<condition>/p<prompt>.safetensors`
in the run folder; at predict end it summarizes every (prompt, condition) of
the merged results table from those files, and the refiner drift from the
table's `extra.refiner_drift` column. A resumed run, or a one-prompt smoke
run over a finished study, therefore writes exactly the file an uninterrupted
run writes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from callbacks.metrics import RunSummaryCallback, is_number, item_row, table_rows
from llm_dit.results.figures import cosine_matrix_figure, varies
from llm_dit.run_folder import run_dir

ANALYSIS_FILE = "embedding_analysis.json"
FIGURE_FILE = "figures/cosine_matrix.png"
SIDECAR_FOLDER = "embeddings"
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
            values = [v for p in sorted(a.keys() & b.keys()) if (v := pair(a[p], b[p])) is not None]
            value = math.fsum(values) / len(values) if values else None
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
    """Exact (order-independent) mean: the same items give the same bits in any order."""
    return float(math.fsum(values) / len(values)) if values else None


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
    """Write embedding_analysis.json and figures/cosine_matrix.png; return (json path, figure or None).

    The figure is left out (and an older one removed) when every cell is the same
    number: conditions that share one encoding (surgery or sampler studies) can
    only show 1.0 there, which says nothing.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ANALYSIS_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(result, indent=2))
    temporary.replace(path)
    figure = None
    cosine = result.get("cosine_matrix") or {}
    if cosine.get("names") and varies(cosine.get("matrix") or []):
        figure = cosine_figure(cosine["names"], cosine["matrix"])
        (folder / FIGURE_FILE).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(folder / FIGURE_FILE, dpi=110)
    else:
        (folder / FIGURE_FILE).unlink(missing_ok=True)
    return path, figure


def cosine_figure(names: Sequence[str], matrix: Sequence[Sequence[float | None]]) -> Any:
    """The shared figure builder (llm_dit.results.figures), with None cells as NaN."""
    values = [[float("nan") if v is None else v for v in row] for row in matrix]
    return cosine_matrix_figure(list(names), values)


# ----- per-item sidecars: what the summary needs, stored when the item is generated -------


def sidecar_path(run_dir: Path, item_id: str, prompt_index: int) -> Path:
    """`embeddings/<condition folder>/p<prompt>.safetensors`: one file per (prompt, condition); seeds share it."""
    return Path(run_dir) / SIDECAR_FOLDER / Path(str(item_id)).parent / f"p{int(prompt_index):03d}.safetensors"


def save_record(record: EmbeddingRecord, path: Path, prompt: str) -> None:
    """Write `record` losslessly (float32 tensors + JSON metadata), atomically (ranks may race)."""
    tensors = {"mean": record.mean.detach().float().contiguous()}
    if record.user_rows is not None:
        tensors["user_rows"] = record.user_rows.detach().float().contiguous()
    if record.user_token_ids:
        tensors["user_token_ids"] = torch.tensor(record.user_token_ids, dtype=torch.int64)
    fields = {
        "prompt": prompt, "prompt_index": record.prompt_index, "condition": record.condition,
        "num_tokens": record.num_tokens, "num_rows": record.num_rows, "compressed": record.compressed,
        "segment_tokens": record.segment_tokens, "segment_norms": record.segment_norms,
        "think_user_cosine": record.think_user_cosine,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(temporary), metadata={"record": json.dumps(fields)})
    os.replace(temporary, path)


def load_record(path: Path, prompt: str | None = None) -> EmbeddingRecord | None:
    """The record stored at `path`, or None when absent, unreadable or made for another prompt text."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            fields = json.loads((handle.metadata() or {})["record"])
        tensors = load_file(str(path))
    except Exception:  # a torn or foreign file: treated as missing, so the item's pair is re-stored
        return None
    if prompt is not None and fields.get("prompt") != prompt:
        return None
    ids = tensors.get("user_token_ids")
    return EmbeddingRecord(
        prompt_index=int(fields["prompt_index"]),
        condition=str(fields["condition"]),
        mean=tensors["mean"],
        num_tokens=int(fields["num_tokens"]),
        num_rows=int(fields["num_rows"]),
        compressed=bool(fields["compressed"]),
        user_token_ids=tuple(int(i) for i in ids.tolist()) if ids is not None else (),
        user_rows=tensors.get("user_rows"),
        segment_tokens={k: int(v) for k, v in fields["segment_tokens"].items()},
        segment_norms={k: float(v) for k, v in fields["segment_norms"].items()},
        think_user_cosine=fields.get("think_user_cosine"),
    )


def drift_from_rows(rows: Iterable[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """Per condition, each item's per-block refiner drift stored in the table (`extra.refiner_drift`)."""
    drift: dict[str, list[list[float]]] = {}
    for row in rows:
        values = row.get("extra.refiner_drift")
        if isinstance(values, list) and values and all(is_number(v) for v in values):
            drift.setdefault(str(row["condition"]), []).append([float(v) for v in values])
    return drift


# ----- the callback ------------------------------------------------------------------------


class EmbeddingAnalysis(RunSummaryCallback):
    """Stores each generated (prompt, condition)'s caption-feature summary; writes embedding_analysis.json.

    The summary covers every (prompt, condition) of the merged results table
    (see the module docstring), read from the sidecars stored at generation time.
    Tables made before sidecars existed lack them: with `fill_resumed`, rank 0
    encodes those pairs once with the module's text encoder (when the current
    study still has them) and stores their sidecars, so later runs read them back.

    Args:
        fill_resumed: encode (text encoder only) table pairs that have no sidecar.
        log_figure: log the cosine matrix to TensorBoard (rank 0).
    """

    def __init__(self, fill_resumed: bool = True, log_figure: bool = True) -> None:
        super().__init__()
        self.fill_resumed = fill_resumed
        self.log_figure = log_figure
        self._stored: set[tuple[int, str]] = set()
        self._local: list[dict[str, Any]] = []  # this run's items as table rows (see callbacks.metrics.table_rows)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self._stored, self._local = set(), []

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        embeddings = getattr(outputs, "embeddings", None) or []
        encodings = getattr(outputs, "encodings", None) or []
        resumed = list(getattr(outputs, "resumed", None) or [False] * len(outputs.items))
        drift = (getattr(outputs, "extras", None) or {}).get("refiner_drift") or []
        for index, item in enumerate(outputs.items):
            row = {**item_row(item), "prompt": item.prompt}
            if not resumed[index] and index < len(drift) and drift[index]:
                row["extra.refiner_drift"] = list(drift[index])
            self._local.append(row)
            key = (item.prompt_index, item.condition)
            if resumed[index] or key in self._stored or index >= len(embeddings) or embeddings[index] is None:
                continue
            if index < len(encodings) and encodings[index] is not None:
                record = make_record(embeddings[index], encodings[index], *key)
                save_record(record, sidecar_path(run_dir(trainer), item.item_id, item.prompt_index), item.prompt)
                self._stored.add(key)

    def summarize(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = table_rows(trainer, self._local)
        if not trainer.is_global_zero or not rows:
            return
        folder = run_dir(trainer)
        study = getattr(getattr(trainer, "datamodule", None), "study", None)
        pairs: dict[tuple[int, str], dict[str, Any]] = {}
        for row in rows:
            pairs.setdefault((int(row["prompt_index"]), str(row["condition"])), row)
        records, missing = [], []
        for key, row in pairs.items():
            record = load_record(sidecar_path(folder, row["item_id"], key[0]), row.get("prompt"))
            if record is None:
                missing.append(key)
            else:
                records.append(record)
        if missing and self.fill_resumed:
            records += self._encode_missing(trainer, pl_module, set(missing), folder)
        if not records and not any("extra.refiner_drift" in row for row in rows):
            return
        conditions = [c.name for c in study.resolved_conditions()] if study is not None else []
        control = study.control if study is not None else "control"
        result = summarize(records, conditions, control, drift_from_rows(rows))
        header = {"study": getattr(study, "name", None), "kind": getattr(study, "kind", None), "source": "predict"}
        _, figure = write_analysis({**header, **result}, folder)
        self._log(trainer, result, figure)

    def _encode_missing(
        self, trainer: L.Trainer, pl_module: L.LightningModule, missing: set[tuple[int, str]], folder: Path
    ) -> list[EmbeddingRecord]:
        """Encode the missing pairs the current study still has, and store their sidecars."""
        items = getattr(getattr(trainer, "datamodule", None), "items", None) or []
        todo = [item for item in _first_per_prompt(items) if (item.prompt_index, item.condition) in missing]
        encoder = getattr(pl_module, "encoder", None)
        if not todo or encoder is None:
            return []
        records = encode_records(encoder, todo)
        by_key = {(item.prompt_index, item.condition): item for item in todo}
        for record in records:
            item = by_key[record.key]
            save_record(record, sidecar_path(folder, item.item_id, item.prompt_index), item.prompt)
        return records

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
