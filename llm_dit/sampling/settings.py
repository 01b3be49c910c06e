"""Sampler settings a study can vary, validated before any model loads."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import surgery
from llm_dit.encoding.options import check_keys

LATENT_MULTIPLE = 16  # VAE downsamples 8x, the DiT patchifies 2x2


@dataclass(frozen=True)
class SamplerSettings:
    """Flow-match Euler sampling as Z-Image-Turbo runs it.

    Attributes:
        steps: transformer calls per image (Turbo: 8; diffusers 0.42.1 does N calls for N steps).
        shift: sigma' = shift*sigma / (1 + (shift-1)*sigma); Turbo uses 3.0.
        guidance_scale: CFG weight in diffusers' convention pos + g*(pos - neg); 0 disables CFG.
        negative_prompt: prompt of the negative branch when CFG is on.
        height, width: output pixels, multiples of 16.
        skip_layer_guidance: optional dict {layers, scale, start, stop}: an extra
            forward with the given DiT `layers` skipped, pushed away from (SD3.5 style).
    """

    steps: int = 8
    shift: float = 3.0
    guidance_scale: float = 0.0
    negative_prompt: str = ""
    height: int = 1024
    width: int = 1024
    skip_layer_guidance: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_number("steps", self.steps, integer=True)
        if self.steps < 1:
            raise ValueError(f"sampler.steps must be an integer >= 1, got {self.steps}; Turbo uses 8")
        _check_number("shift", self.shift)
        if self.shift <= 0:
            raise ValueError(f"sampler.shift must be > 0, got {self.shift}; Turbo uses 3.0")
        _check_number("guidance_scale", self.guidance_scale)
        if self.guidance_scale < 0:
            raise ValueError(f"sampler.guidance_scale must be >= 0 (0 turns CFG off), got {self.guidance_scale}")
        if not isinstance(self.negative_prompt, str):
            raise ValueError(f"sampler.negative_prompt must be text, got {self.negative_prompt!r}; quote it in YAML")
        if self.skip_layer_guidance is not None:
            if not isinstance(self.skip_layer_guidance, dict):
                raise ValueError(f"sampler.skip_layer_guidance must be a mapping like {{layers: [7, 8, 9], scale: 2.8}}, "
                                 f"got {self.skip_layer_guidance!r}")
            try:
                surgery.SkipLayerGuidance.from_dict(dict(self.skip_layer_guidance))
            except (TypeError, ValueError) as error:
                raise ValueError(f"sampler.skip_layer_guidance: {error}") from None
        for name in ("height", "width"):
            value = getattr(self, name)
            _check_number(name, value, integer=True)
            if value < LATENT_MULTIPLE or value % LATENT_MULTIPLE:
                raise ValueError(
                    f"sampler.{name} must be a positive multiple of {LATENT_MULTIPLE}, got {value} "
                    f"(nearest: {max(LATENT_MULTIPLE, round(value / LATENT_MULTIPLE) * LATENT_MULTIPLE)})"
                )

    @property
    def uses_cfg(self) -> bool:
        return self.guidance_scale > 0

    def with_overrides(self, overrides: dict[str, Any]) -> SamplerSettings:
        check_keys(overrides, SamplerSettings, "sampler")
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _check_number(name: str, value: Any, integer: bool = False) -> None:
    """YAML and the command line can hand over text or booleans where a number belongs."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or (integer is False and value != value):
        if integer and isinstance(value, float) and value.is_integer():
            return
        kind = "an integer" if integer else "a number"
        raise ValueError(f"sampler.{name} must be {kind}, got {value!r}")
