"""The results table of a run folder (results.jsonl and its per-rank shards), read back.

One reader for every consumer (the writer's resume, the metric summaries, TensorBoard, the
report): a torn line (crash or full disk mid-write) is skipped, and a later row of an item
(shards after the merged table) replaces an earlier one whole. The writer
(callbacks.writer) owns writing, merging and repairing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = "results.jsonl"


def parse_row(line: str) -> dict[str, Any] | None:
    """A results row from one JSON line; None for a torn or foreign line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and "item_id" in row else None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a torn line (crash or full disk mid-write) is skipped
    (`repair_tables` reports and removes it at the next run's start)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        row = parse_row(line)
        if row is not None:
            rows.append(row)
    return rows


def table_paths(folder: Path) -> list[Path]:
    return [folder / RESULTS, *sorted(folder.glob("results.rank*.jsonl"))]


def all_rows(folder: Path) -> dict[str, dict[str, Any]]:
    """Every row of the merged table and all shards, one per item id.

    Every row written is complete, so a later row (shards after the merged table)
    replaces an earlier one: an item made again replaces its old row whole.
    """
    rows: dict[str, dict[str, Any]] = {}
    for path in table_paths(folder):
        for row in read_rows(path):
            rows[row["item_id"]] = row
    return rows


def finished_items(folder: Path, rows: dict[str, dict[str, Any]] | None = None) -> dict[str, Path]:
    """Item id -> PNG path for items whose row and image both exist."""
    rows = all_rows(folder) if rows is None else rows
    return {item_id: folder / row["image"] for item_id, row in rows.items() if (folder / row["image"]).is_file()}
