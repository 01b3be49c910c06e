"""`style_adapter`: apply a context-refiner adapter exported by `fit`, reversibly.

    surgery: [{variant: style_adapter, path: lightning_logs/refiner_style_adapter/adapter, scale: 1.0}]

Z-Image-specific (it loads adapters llm_dit.training wrote), so it lives here and
registers itself with `surgery` when llm_dit.training is imported; `surgery` stays
model-agnostic. The adapter is rebuilt as a new block list and swapped in
for `context_refiner` through the registry, so the base blocks and weights are
never edited and leaving the context gives back the exact model. `scale`
weighs the adapter: 0 is the base model bit for bit (the adapter does not run),
1 is the adapter as trained, values in between (or beyond) interpolate: the LoRA
delta, the appended blocks' residual, or the full fine-tune's weights
(base + scale * (tuned - base)). An adapter made for another base model is
refused, naming both fingerprints.

List it first in a condition's surgery: the base fingerprint is taken from the
transformer as the preceding specs left it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from llm_dit.errors import UserError
from llm_dit.training.adapter_files import check_fits, load_adapter, read_shapes, read_spec
from llm_dit.training.adapters import applied_blocks
from llm_dit.training.fingerprint import check_adapter_base
from surgery.hooks import HookRegistry
from surgery.spec import SurgerySpec, register_variant
from surgery.targets import blocks_of, get_blocks
from surgery.variants import swap_blocks


@register_variant("style_adapter")
@dataclass(kw_only=True)
class StyleAdapter(SurgerySpec):
    """Run the context refiner with a trained style adapter.

    Attributes:
        path: the adapter folder a fit wrote (`<run>/adapter`), or its adapter.json.
        scale: adapter strength; 0 = base model exactly, 1 = as trained.
    """

    path: str
    scale: float = 1.0

    def check(self) -> None:
        if self.target != "context_refiner":
            raise ValueError(f"surgery variant 'style_adapter' adapts the context_refiner only, got target {self.target!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise ValueError(f"surgery variant 'style_adapter': scale must be a finite number, got {self.scale!r}")
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"surgery variant 'style_adapter': path must be the adapter folder, got {self.path!r}")
        read_spec(self.path)  # missing files, a foreign format or a damaged header fail at config time
        read_shapes(self.path)

    def validate(self, n_blocks: int) -> None:
        expected = read_spec(self.path).base_blocks
        if expected != n_blocks:
            raise ValueError(f"{self.label()}: the adapter was made for a {self.target} of {expected} blocks, this one has {n_blocks}")

    def apply(self, transformer: nn.Module, registry: HookRegistry) -> None:
        spec, tensors = load_adapter(self.path)
        check_base(self.path, spec, transformer)
        base = blocks_of(get_blocks(transformer, self.target))
        swap_blocks(transformer, self.target, applied_blocks(base, spec, tensors, float(self.scale)), registry, self.label())


def check_base(path: str, spec: Any, transformer: nn.Module) -> None:
    """The adapter's base fingerprint against `transformer` (untouched by other surgery), as a one-line error."""
    try:
        check_adapter_base(spec.base_fingerprint, spec.portable_fingerprint, transformer,
                           f"style adapter {path!r}", spec.info.get("weights"))
    except ValueError as error:
        raise UserError(str(error)) from None


def first_adapters(surgery_lists: Iterable[Sequence[Mapping[str, Any]]]) -> list[str]:
    """Paths of the style adapters listed first in a condition's surgery (those see the base transformer)."""
    paths = []
    for specs in surgery_lists:
        if specs and specs[0].get("variant") == "style_adapter" and specs[0].get("path") not in paths:
            paths.append(specs[0]["path"])
    return paths


def check_adapters_fit(surgery_lists: Iterable[Sequence[Mapping[str, Any]]], transformer_config: dict[str, Any] | None) -> None:
    """Before any model loads: every style adapter's tensor shapes (safetensors header) fit the model's config."""
    for specs in surgery_lists:
        for spec in specs:
            if spec.get("variant") == "style_adapter":
                check_fits(spec["path"], transformer_config)


def check_adapters_base(surgery_lists: Iterable[Sequence[Mapping[str, Any]]], transformer: nn.Module) -> None:
    """Once the model is loaded and before the first image: each first-listed adapter matches its base weights."""
    for path in first_adapters(surgery_lists):
        check_base(path, read_spec(path), transformer)
