"""The structural variants: which blocks of a list run, and how often.

Every variant builds a new ModuleList from the list as it is now and swaps it in
for `transformer.<target>` through the registry; undo puts the original list
object back. Swaps, not hooks, because they hold under gradient checkpointing
(see hooks.py) and because the parameters of a skipped block leave the module
tree during the context, so DDP and optimizers never see unused parameters.

Skipped positions keep their index (a `BlockBypass` stands in), so
`context_refiner.1` names the same position whatever is skipped. What a bypass
returns and which projections identity_init zeroes come from the block-class
table in `surgery.blocks` (Z-Image, Flux, SD3 blocks), so the same variants work
on any listed model and any dotted target.
"""

from __future__ import annotations

import copy
import itertools
from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from surgery.blocks import block_class, block_kind, bypass_output, none_flags, zero_for_identity
from surgery.hooks import HookRegistry
from surgery.spec import SurgerySpec, check_bool, check_index_range, check_indices, check_int, register_variant
from surgery.targets import blocks_of, get_blocks, parent_of

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


class BlockBypass(nn.Module):
    """Stands in for a skipped block: returns the inputs the block would carry on unchanged,
    per its class's entry in `surgery.blocks` (Z-Image: the hidden states; Flux/SD3: the pair
    (encoder_hidden_states, hidden_states))."""

    def __init__(self, skipped: nn.Module) -> None:
        super().__init__()
        self.stands_in_for = block_class(skipped)
        self.skipped_class = self.stands_in_for.__name__
        self._kind = block_kind(skipped)
        self._none = none_flags(skipped, self._kind)

    def forward(self, *args: object, **kwargs: object) -> object:
        return bypass_output(self.stands_in_for, self._kind, self._none, args, kwargs)

    def extra_repr(self) -> str:
        return f"skipped={self.skipped_class}"


def copy_block(block: nn.Module, share_weights: bool = False) -> nn.Module:
    """Deep copy of a block with no hooks: hooks belong to the module they were put on.

    (A plain deepcopy would also copy a probe's hook, and with a bound-method
    hook, the probe and everything it recorded.) With `share_weights` the copy is
    a new module tree over the SAME parameter and buffer tensors.
    """
    memo: dict[int, object] = {}
    if share_weights:
        memo.update({id(t): t for t in itertools.chain(block.parameters(), block.buffers())})
    for module in block.modules():
        for attr in _HOOK_DICTS:
            hooks = getattr(module, attr, None)
            if hooks:
                memo[id(hooks)] = OrderedDict()
    return copy.deepcopy(block, memo)


def zero_output_projections(block: nn.Module) -> None:
    """Zero the output projections that make `block` exactly the identity (`surgery.blocks`):
    for Z-Image `attention.to_out[0]` and `feed_forward.w2`, whose sandwich norms
    (x + norm2(attn(...)), x + norm2(ffn(...))) give x, because RMSNorm of a zero vector is zero."""
    zero_for_identity(block)


def swap_blocks(transformer: nn.Module, target: str, blocks: list[nn.Module], registry: HookRegistry, name: str) -> None:
    """Swap `transformer.<target>` for a ModuleList of `blocks` (undone by the registry)."""
    current = get_blocks(transformer, target)
    if getattr(current, "is_refiner_cache", False):
        raise RuntimeError(
            f"{name}: {target} is wrapped by cache_context_refiner; apply structural surgery first, then the cache"
        )
    parent, child = parent_of(transformer, target)
    registry.swap_child(parent, child, nn.ModuleList(blocks), name=name)


def bypass(transformer: nn.Module, target: str, indices: set[int], registry: HookRegistry, name: str) -> None:
    blocks = blocks_of(get_blocks(transformer, target))
    swap_blocks(transformer, target, [BlockBypass(b) if i in indices else b for i, b in enumerate(blocks)], registry, name)


@register_variant("skip")
@dataclass(kw_only=True)
class BlockSkip(SurgerySpec):
    """Bypass the whole list: every block returns its input (refiner off)."""

    def apply(self, transformer: nn.Module, registry: HookRegistry) -> None:
        n_blocks = len(get_blocks(transformer, self.target))
        bypass(transformer, self.target, set(range(n_blocks)), registry, self.label())


@register_variant("truncate")
@dataclass(kw_only=True)
class BlockTruncate(SurgerySpec):
    """Keep the first `use_layers` blocks, bypass the rest.

    Attributes:
        use_layers: how many blocks to keep (0 = skip all).
    """

    use_layers: int

    def check(self) -> None:
        check_int(self, "use_layers", self.use_layers, minimum=0)

    def validate(self, n_blocks: int) -> None:
        if self.use_layers > n_blocks:
            raise ValueError(f"{self.label()}: use_layers {self.use_layers} out of range; {self.target} has {n_blocks} blocks, valid 0..{n_blocks}")

    def apply(self, transformer: nn.Module, registry: HookRegistry) -> None:
        n_blocks = len(get_blocks(transformer, self.target))
        bypass(transformer, self.target, set(range(self.use_layers, n_blocks)), registry, self.label())


@register_variant("skip_layers")
@dataclass(kw_only=True)
class BlockSkipLayers(SurgerySpec):
    """Bypass the blocks at the given indices (per-layer ablation; skip-layer guidance).

    Attributes:
        layers: 0-based indices into the target list.
    """

    layers: list[int]

    def check(self) -> None:
        self.layers = check_indices(self, "layers", self.layers)

    def validate(self, n_blocks: int) -> None:
        check_index_range(self, self.layers, n_blocks)

    def apply(self, transformer: nn.Module, registry: HookRegistry) -> None:
        self.validate(len(get_blocks(transformer, self.target)))
        bypass(transformer, self.target, set(self.layers), registry, self.label())


@register_variant("duplicate")
@dataclass(kw_only=True)
class BlockDuplicate(SurgerySpec):
    """Run every block twice in a row: [b0, b0, b1, b1, ...], 2N blocks.

    Attributes:
        shared: true: the same block object runs twice (no memory, tied weights);
            false: the second run is an independent deep copy (trainable apart).
    """

    shared: bool = True

    def check(self) -> None:
        check_bool(self, "shared", self.shared)

    def apply(self, transformer: nn.Module, registry: HookRegistry) -> None:
        blocks = []
        for index, block in enumerate(blocks_of(get_blocks(transformer, self.target))):
            ended = [name for name, none in none_flags(block, block_kind(block)).items() if none]
            if ended:
                raise ValueError(
                    f"{self.label()}: {self.target}.{index} ({type(block).__name__}) returns None for {ended[0]} "
                    "(it ends that stream), so it cannot run twice; use skip_layers or another target"
                )
            blocks += [block, block if self.shared else copy_block(block)]
        swap_blocks(transformer, self.target, blocks, registry, self.label())


@register_variant("identity_init")
@dataclass(kw_only=True)
class BlockIdentityInit(SurgerySpec):
    """Replace every block by a copy whose output projections are zero: exactly the
    identity at start, yet trainable (the refiner-as-adapter starting point).
    The original blocks are untouched and come back on exit."""

    def apply(self, transformer: nn.Module, registry: HookRegistry) -> None:
        blocks = []
        for block in blocks_of(get_blocks(transformer, self.target)):
            fresh = copy_block(block)
            zero_output_projections(fresh)
            blocks.append(fresh)
        swap_blocks(transformer, self.target, blocks, registry, self.label())
