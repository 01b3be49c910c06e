"""surgery: declarative, exactly reversible changes to a transformer's block lists.

    with surgery.apply(transformer, [{"variant": "truncate", "use_layers": 1}]) as handle:
        images = sample(transformer, ...)
    # transformer is back: same modules, same state_dict

Model-agnostic (it imports nothing of llm_dit). Specs (`skip`, `truncate`,
`duplicate`, `identity_init`, `skip_layers`) target any dotted path to a ModuleList
(`context_refiner` by default; `layers`, Flux's `transformer_blocks`, ...) and
round-trip through YAML dicts; what a bypassed block returns and what makes it the
identity come from a per-block-class table (`surgery.blocks`: Z-Image, Flux, SD3).
They are applied by module swaps through one `HookRegistry`, undone LIFO in
`finally`, so contexts nest and hold under gradient checkpointing. The same
registry carries every other change to a model (llm_dit's speed options, encoder
truncation, refiner cache): `live_hooks()` lists them all and `remove_all(model)`
undoes them. Around the specs: probes that record block I/O (embedding drift) or any
module matched by a names filter (`record_activations`), skip-layer guidance, and
`hook_points` to list what can be targeted. New variants register with
`@register_variant("name")`, new block classes with `register_block`.
"""

from surgery.blocks import BLOCKS, BlockKind, block_kind, register_block
from surgery.context import SurgeryHandle, apply
from surgery.discover import HookPoint, format_hook_points, hook_points, names_filter
from surgery.guidance import SkipLayerGuidance, skip_layers_context
from surgery.hooks import HookRegistry, count_live_hooks, live_hooks, remove_all
from surgery.probes import (
    Activations,
    BlockIO,
    BlockIORecorder,
    EmbeddingDrift,
    embedding_drift,
    record_activations,
    record_block_io,
    sub_batch,
    sub_batch_rows,
    token_cosine,
)
from surgery.spec import VARIANTS, SurgerySpec, parse_specs, register_variant, validate_specs, variant_names
from surgery.targets import DEFAULT_TARGET, block_counts
from surgery.variants import BlockBypass, BlockDuplicate, BlockIdentityInit, BlockSkip, BlockSkipLayers, BlockTruncate

__all__ = [
    "Activations",
    "BLOCKS",
    "BlockKind",
    "DEFAULT_TARGET",
    "VARIANTS",
    "BlockBypass",
    "BlockDuplicate",
    "BlockIO",
    "BlockIORecorder",
    "BlockIdentityInit",
    "BlockSkip",
    "BlockSkipLayers",
    "BlockTruncate",
    "EmbeddingDrift",
    "HookPoint",
    "HookRegistry",
    "SkipLayerGuidance",
    "SurgeryHandle",
    "SurgerySpec",
    "apply",
    "block_counts",
    "block_kind",
    "count_live_hooks",
    "embedding_drift",
    "format_hook_points",
    "hook_points",
    "live_hooks",
    "names_filter",
    "parse_specs",
    "record_activations",
    "record_block_io",
    "register_block",
    "register_variant",
    "remove_all",
    "skip_layers_context",
    "sub_batch",
    "sub_batch_rows",
    "token_cosine",
    "validate_specs",
    "variant_names",
]
