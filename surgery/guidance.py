"""Skip-layer guidance (SD3.5): push the prediction away from one made with some DiT layers skipped.

The sampler runs an extra forward inside `skip_layers_context` on the steps where
`active` says so and combines `prediction + scale * (positive - skipped)`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from surgery.context import SurgeryHandle
from surgery.targets import block_counts, check_target
from surgery.variants import BlockSkipLayers


def skip_layers_context(transformer: nn.Module, target: str = "layers", layers: Sequence[int] = ()) -> SurgeryHandle:
    """Bypass `layers` of `transformer.<target>` while the `with` block runs (same mechanism as `apply`)."""
    return SurgeryHandle(transformer, [BlockSkipLayers(target=target, layers=list(layers))], name="skip_layers")


@dataclass
class SkipLayerGuidance:
    """Skip-layer guidance settings, SD3.5's defaults.

    Attributes:
        layers: indices of the `target` blocks skipped in the extra forward (SD3.5 Medium: 7, 8, 9).
        scale: weight of (positive - skipped); 0 disables it.
        start, stop: active on steps i with start * N < i < stop * N (fractions of the N steps,
            strict, as diffusers' StableDiffusion3Pipeline). With Turbo's 8 steps the defaults
            select step 1 only.
        target: the block list to skip in (the main DiT `layers`).
    """

    layers: list[int]
    scale: float = 2.8
    start: float = 0.01
    stop: float = 0.2
    target: str = "layers"

    def __post_init__(self) -> None:
        check_target(self.target)
        if isinstance(self.layers, (str, bytes)) or not isinstance(self.layers, Sequence) or not self.layers:
            raise ValueError(f"skip-layer guidance needs a non-empty list of layers, got {self.layers!r}")
        self.layers = list(self.layers)
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.layers):
            raise ValueError(f"skip-layer guidance layers must be non-negative integers, got {self.layers}")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"skip-layer guidance layers has repeated indices: {self.layers}")
        for name in ("scale", "start", "stop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"skip-layer guidance {name} must be a finite number, got {value!r}")
        if self.scale < 0:
            raise ValueError(f"skip-layer guidance scale must be >= 0, got {self.scale}")
        if not 0.0 <= self.start < self.stop <= 1.0:
            raise ValueError(f"skip-layer guidance needs 0 <= start < stop <= 1, got start={self.start}, stop={self.stop}")

    def validate(self, transformer: nn.Module) -> None:
        """Check the layer indices against the model's `target` list."""
        self.check_block_counts(block_counts(transformer))

    def check_block_counts(self, n_blocks_by_target: Mapping[str, int]) -> None:
        """The same check from block counts alone (config files), before any weights load."""
        n_blocks = n_blocks_by_target.get(self.target)
        if n_blocks is None:
            raise ValueError(f"skip-layer guidance: this model has no block list {self.target!r}")
        bad = [i for i in self.layers if i >= n_blocks]
        if bad:
            raise ValueError(f"skip-layer guidance: layer index {bad[0]} out of range; {self.target} has {n_blocks} blocks, valid 0..{n_blocks - 1}")

    def active(self, step_index: int, num_steps: int) -> bool:
        """Whether step `step_index` (0-based) of `num_steps` gets the extra skipped-layer forward."""
        return self.scale != 0 and num_steps * self.start < step_index < num_steps * self.stop

    def context(self, transformer: nn.Module) -> SurgeryHandle:
        return skip_layers_context(transformer, self.target, self.layers)

    def guide(self, prediction: torch.Tensor, positive: torch.Tensor, skipped: torch.Tensor) -> torch.Tensor:
        """`prediction + scale * (positive - skipped)` (SD3.5's combination)."""
        return prediction + self.scale * (positive - skipped)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SkipLayerGuidance:
        allowed = {"layers", "scale", "start", "stop", "target"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"skip-layer guidance has no option(s) {', '.join(unknown)}; its options: {', '.join(sorted(allowed))}")
        if "layers" not in data:
            raise ValueError("skip-layer guidance needs option layers, e.g. {layers: [7, 8, 9]}")
        return cls(**data)
