"""The block lists of a Z-Image transformer that surgery can target, by name."""

from __future__ import annotations

from torch import nn

# context_refiner: caption tokens, no timestep (cacheable); noise_refiner: image
# tokens, modulated; layers: the main DiT over [image, caption]; siglip_refiner:
# only in the Omni variant (None otherwise).
TARGETS: tuple[str, ...] = ("context_refiner", "noise_refiner", "layers", "siglip_refiner")
TIMESTEP_FREE_TARGETS: tuple[str, ...] = ("context_refiner", "siglip_refiner")


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"unknown surgery target {target!r}; valid targets: {', '.join(TARGETS)}")


def get_blocks(transformer: nn.Module, target: str) -> nn.ModuleList:
    """The ModuleList `transformer.<target>` as it is now (possibly swapped by surgery)."""
    check_target(target)
    blocks = getattr(transformer, target, None)
    if not isinstance(blocks, nn.ModuleList):
        present = ", ".join(block_counts(transformer))
        raise ValueError(f"this transformer has no block list {target!r}; it has: {present}")
    return blocks


def blocks_of(blocks: nn.ModuleList) -> list[nn.Module]:
    """The modules of a list by position, without calling `__iter__`.

    The refiner cache overrides `__iter__` (that is how the forward loop sees one
    cached runner instead of the blocks), so surgery code never iterates a list.
    """
    return list(blocks._modules.values())


def block_counts(transformer: nn.Module) -> dict[str, int]:
    """Number of blocks in each target list present on `transformer` (for `validate_specs`)."""
    counts = {}
    for target in TARGETS:
        blocks = getattr(transformer, target, None)
        if isinstance(blocks, nn.ModuleList):
            counts[target] = len(blocks)
    return counts
