"""surgery: declarative, exactly reversible changes to Z-Image's block lists.

    with surgery.apply(transformer, [{"variant": "truncate", "use_layers": 1}]) as handle:
        images = sample(transformer, ...)
    # transformer is back: same modules, same state_dict

Specs (`skip`, `truncate`, `duplicate`, `identity_init`, `skip_layers`) target a
block list (`context_refiner` by default, `noise_refiner`, `layers`,
`siglip_refiner`) and round-trip through YAML dicts. They are applied by module
swaps through one `HookRegistry`, undone LIFO in `finally`, so contexts nest and
hold under gradient checkpointing. Around them: probes that record block I/O and
measure embedding drift, a cache that runs the timestep-free context refiner
once per prompt, skip-layer guidance, and `hook_points` to list what can be
targeted. New variants register with `@register_variant("name")`.
"""

from surgery.context import SurgeryHandle, apply
from surgery.discover import HookPoint, format_hook_points, hook_points
from surgery.guidance import SkipLayerGuidance, skip_layers_context
from surgery.hooks import HookRegistry, count_live_hooks, live_hooks, remove_all
from surgery.probes import (
    BlockIO,
    BlockIORecorder,
    EmbeddingDrift,
    embedding_drift,
    record_block_io,
    sub_batch,
    sub_batch_rows,
    token_cosine,
)
from surgery.spec import VARIANTS, SurgerySpec, parse_specs, register_variant, validate_specs, variant_names
from surgery.targets import TARGETS, block_counts
from surgery.variants import BlockBypass, BlockDuplicate, BlockIdentityInit, BlockSkip, BlockSkipLayers, BlockTruncate

__all__ = [
    "TARGETS",
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
    "count_live_hooks",
    "embedding_drift",
    "format_hook_points",
    "hook_points",
    "live_hooks",
    "parse_specs",
    "record_block_io",
    "register_variant",
    "remove_all",
    "skip_layers_context",
    "sub_batch",
    "sub_batch_rows",
    "token_cosine",
    "validate_specs",
    "variant_names",
]
