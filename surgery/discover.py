"""Discoverability: list the points of a model that surgery and probes can target, with stable dotted names.

`python -m llm_dit.cli hook-points [--filter PATTERN]` prints this table; the names are
what specs (`target`, `layers`) and probe records refer to. Without a filter it lists
every block list, its blocks and the model's other top-level modules (Z-Image:
`cap_embedder`, `all_final_layer.2-1`, ...); a names filter reaches any depth, e.g.
`layers.*.attention` or `context_refiner.0.*` (TransformerLens' `names_filter`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from surgery.targets import blocks_of

NamesFilter = str | Sequence[str] | Callable[[str], bool] | None


@dataclass(frozen=True)
class HookPoint:
    """One row: a block list ("layers"), a block in it ("layers.3"), or any other module
    ("layers.3.attention", "cap_embedder").

    Attributes:
        modulated: whether the block takes the timestep (adaLN); None for a list, a module,
            or a block without that attribute (e.g. a bypass).
        kind: "list" | "block" | "module".
    """

    name: str
    cls: str
    parameters: int
    modulated: bool | None
    kind: str


def names_filter(names: NamesFilter) -> Callable[[str], bool]:
    """A predicate on dotted names: a glob ("layers.*.attention"; a plain name matches itself),
    a list of globs (any of them), or a callable returned as is."""
    if callable(names):
        return names
    if isinstance(names, str):
        patterns = [names]
    elif isinstance(names, Sequence) and names and all(isinstance(n, str) for n in names):
        patterns = list(names)
    else:
        raise ValueError(f"a names filter is a glob such as 'layers.*.attention', a list of them, or a function; got {names!r}")
    return lambda name: any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def hook_points(model: nn.Module, names: NamesFilter = None) -> list[HookPoint]:
    """Rows for `model`, in registration order.

    Without `names`: every top-level block list and its blocks, and the other top-level
    modules (ModuleDict items one level down). With `names`: every module at any depth
    whose dotted name matches (see `names_filter`).
    """
    if names is not None:
        match = names_filter(names)
        return [_row(name, module, _kind(model, name, module)) for name, module in model.named_modules() if name and match(name)]
    rows: list[HookPoint] = []
    _overview(model, "", rows)
    return rows


def matching_modules(model: nn.Module, names: NamesFilter) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module whose dotted name matches; a clear error if none does."""
    match = names_filter(names)
    found = [(name, module) for name, module in model.named_modules() if name and match(name)]
    if not found:
        raise ValueError(
            f"no module of this {type(model).__name__} matches {names!r}; list them with surgery.hook_points(model, "
            "'*') or `python -m llm_dit.cli hook-points --filter '*'`"
        )
    return found


def format_hook_points(rows: list[HookPoint] | nn.Module) -> str:
    """A plain-text table of `hook_points` (or of a model directly)."""
    if isinstance(rows, nn.Module):
        rows = hook_points(rows)
    header = ("name", "class", "parameters", "modulated")
    table = [header] + [
        (r.name if r.kind == "list" else f"  {r.name}" if r.kind == "block" else r.name, r.cls, f"{r.parameters:,}",
         "-" if r.modulated is None else ("yes" if r.modulated else "no"))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i == 2 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _overview(module: nn.Module, prefix: str, rows: list[HookPoint]) -> None:
    for name, child in module._modules.items():
        if child is None:
            continue
        path = f"{prefix}{name}"
        if isinstance(child, nn.ModuleList):
            rows.append(_row(path, child, "list"))
            rows.extend(_row(f"{path}.{i}", block, "block") for i, block in enumerate(blocks_of(child)))
        elif isinstance(child, nn.ModuleDict):
            _overview(child, f"{path}.", rows)
        else:
            rows.append(_row(path, child, "module"))


def _kind(model: nn.Module, name: str, module: nn.Module) -> str:
    if isinstance(module, nn.ModuleList):
        return "list"
    parent_name, _, _ = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return "block" if isinstance(parent, nn.ModuleList) else "module"


def _row(name: str, module: nn.Module, kind: str) -> HookPoint:
    modulated = getattr(module, "modulation", None) if kind == "block" else None
    return HookPoint(name, type(module).__name__, sum(p.numel() for p in module.parameters()), modulated, kind)
