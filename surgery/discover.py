"""Discoverability: list every block list and block surgery can target, with stable dotted names.

`python -m llm_dit.cli hook-points` prints this table; the names are what specs
(`target`, `layers`) and probe records refer to.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from surgery.targets import TARGETS, blocks_of


@dataclass(frozen=True)
class HookPoint:
    """One row: a block list ("layers") or a block in it ("layers.3").

    Attributes:
        modulated: whether the block takes the timestep (adaLN); None for a list
            or a block without that attribute (e.g. a bypass).
    """

    name: str
    cls: str
    parameters: int
    modulated: bool | None
    kind: str  # "list" | "block"


def hook_points(transformer: nn.Module) -> list[HookPoint]:
    """Every target list present on `transformer` (siglip_refiner only in Omni) and its blocks, in forward order."""
    rows: list[HookPoint] = []
    for target in TARGETS:
        blocks = getattr(transformer, target, None)
        if not isinstance(blocks, nn.ModuleList):
            continue
        rows.append(HookPoint(target, type(blocks).__name__, _count(blocks), None, "list"))
        for index, block in enumerate(blocks_of(blocks)):
            modulated = getattr(block, "modulation", None)
            rows.append(HookPoint(f"{target}.{index}", type(block).__name__, _count(block), modulated, "block"))
    return rows


def format_hook_points(rows: list[HookPoint] | nn.Module) -> str:
    """A plain-text table of `hook_points` (or of a transformer directly)."""
    if isinstance(rows, nn.Module):
        rows = hook_points(rows)
    header = ("name", "class", "parameters", "modulated")
    table = [header] + [
        (r.name if r.kind == "list" else f"  {r.name}", r.cls, f"{r.parameters:,}", "-" if r.modulated is None else ("yes" if r.modulated else "no"))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i == 2 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
