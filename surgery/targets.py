"""Block lists surgery can target: any dotted path to a `ModuleList` of a model.

`context_refiner` (Z-Image's caption refiner) is the default target; `layers`,
`noise_refiner`, Flux's `transformer_blocks` / `single_transformer_blocks` or SD3's
`transformer_blocks` work the same way, and so does a nested list such as
`layers.3.attention.to_out`. `block_counts` lists the model's top-level block lists
(those not inside another list's blocks), for validation and error messages.
"""

from __future__ import annotations

import re

from torch import nn

DEFAULT_TARGET = "context_refiner"  # Z-Image's caption refiner, what most studies change
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_-]+)*$")


def check_target(target: object) -> None:
    """A target is a dotted module path such as "context_refiner" or "transformer_blocks"."""
    if not isinstance(target, str) or not _PATH.match(target):
        raise ValueError(
            f"surgery target must be a dotted path to a block list, e.g. context_refiner, layers or "
            f"transformer_blocks; got {target!r}"
        )


def find_module(model: nn.Module, path: str) -> nn.Module | None:
    """`model.<path>` by child names (ModuleList items by index), or None where a part is missing."""
    module: nn.Module | None = model
    for part in path.split("."):
        module = module._modules.get(part) if module is not None else None
    return module


def get_blocks(transformer: nn.Module, target: str) -> nn.ModuleList:
    """The ModuleList `transformer.<target>` as it is now (possibly swapped by surgery)."""
    check_target(target)
    blocks = find_module(transformer, target)
    if not isinstance(blocks, nn.ModuleList):
        present = ", ".join(block_counts(transformer)) or "none"
        what = "nothing" if blocks is None else f"a {type(blocks).__name__}"
        raise ValueError(f"this model has no block list {target!r} (it is {what}); its block lists: {present}")
    return blocks


def split_target(target: str) -> tuple[str, str]:
    """("parent path", "child name") of a target, for swapping it: "layers" -> ("", "layers")."""
    parent, _, child = target.rpartition(".")
    return parent, child


def parent_of(transformer: nn.Module, target: str) -> tuple[nn.Module, str]:
    """The module holding the target list and the list's name in it."""
    parent_path, child = split_target(target)
    parent = find_module(transformer, parent_path) if parent_path else transformer
    if parent is None:
        raise ValueError(f"this model has no module {parent_path!r} (from surgery target {target!r})")
    return parent, child


def blocks_of(blocks: nn.ModuleList) -> list[nn.Module]:
    """The modules of a list by position, without calling `__iter__`.

    A cached list may override `__iter__` (that is how Z-Image's refiner cache hands
    its forward loop one runner instead of the blocks), so surgery never iterates a list.
    """
    return list(blocks._modules.values())


def block_counts(transformer: nn.Module, extra: tuple[str, ...] = ()) -> dict[str, int]:
    """Number of blocks in each top-level block list of `transformer` (registration order),
    plus the lists at the dotted paths in `extra` (for `validate_specs`)."""
    counts: dict[str, int] = {}
    _collect(transformer, "", counts)
    for target in extra:
        if target not in counts:
            module = find_module(transformer, target) if isinstance(target, str) and _PATH.match(target) else None
            if isinstance(module, nn.ModuleList):
                counts[target] = len(module)
    return counts


def _collect(module: nn.Module, prefix: str, counts: dict[str, int]) -> None:
    for name, child in module._modules.items():
        if child is None:
            continue
        path = f"{prefix}{name}"
        if isinstance(child, nn.ModuleList):
            counts[path] = len(child)
        else:
            _collect(child, f"{path}.", counts)
