"""What a study can vary about text encoding, as one validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

LongPromptMode = Literal["truncate", "interpolate", "pool", "attention_pool"]
LONG_PROMPT_MODES: tuple[str, ...] = ("truncate", "interpolate", "pool", "attention_pool")
LayerCombine = Literal["mean", "normalized_mean"]
LAYER_COMBINES: tuple[str, ...] = ("mean", "normalized_mean")


@dataclass(frozen=True)
class EncodingOptions:
    """How a prompt becomes caption features. The defaults are exactly diffusers'
    `ZImagePipeline.encode_prompt`: no system prompt, no think block, layer -2,
    at most 512 template tokens, truncation.

    Attributes:
        system_prompt: text of a system turn, or None for no system turn.
        force_think_block: add an empty `<think>\\n\\n</think>\\n\\n` to the assistant turn.
        thinking_content: text inside the think block (implies a think block).
        assistant_content: text after the think block / generation prompt.
        hidden_layer: index into the encoder's hidden states (0 = embeddings,
            -1 = last layer before the final norm is NOT applied: HF's last
            hidden state includes the norm, so -1 is the normed output), or a
            list of indices combined by `layer_combine`, or "all" for every layer.
        layer_combine: "mean" averages the chosen layers; "normalized_mean"
            RMS-normalizes each layer per token before averaging (the
            layer-normalized average that an NVIDIA CVPR 2025 study found best).
        max_length: the most tokens (whole template) the DiT receives.
        long_prompt_mode: how a longer prompt is brought to `max_length`.
    """

    system_prompt: str | None = None
    force_think_block: bool = False
    thinking_content: str | None = None
    assistant_content: str | None = None
    hidden_layer: int | list[int] | Literal["all"] = -2
    layer_combine: LayerCombine = "mean"
    max_length: int = 512
    long_prompt_mode: LongPromptMode = "truncate"

    def __post_init__(self) -> None:
        for name in ("system_prompt", "thinking_content", "assistant_content"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(
                    f"{name} must be text, got {type(value).__name__} {value!r} "
                    "(in YAML, quote text that contains ': ')"
                )
        if self.long_prompt_mode not in LONG_PROMPT_MODES:
            raise ValueError(
                f"unknown long_prompt_mode {self.long_prompt_mode!r}; choose one of {', '.join(LONG_PROMPT_MODES)}"
            )
        if self.layer_combine not in LAYER_COMBINES:
            raise ValueError(f"unknown layer_combine {self.layer_combine!r}; choose one of {', '.join(LAYER_COMBINES)}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if isinstance(self.hidden_layer, list):
            if not self.hidden_layer:
                raise ValueError("hidden_layer list is empty; give at least one layer index")
            object.__setattr__(self, "hidden_layer", tuple(self.hidden_layer))
        elif isinstance(self.hidden_layer, str) and self.hidden_layer != "all":
            raise ValueError(f"hidden_layer must be an int, a list of ints or 'all', got {self.hidden_layer!r}")

    @property
    def has_think_block(self) -> bool:
        return self.force_think_block or self.thinking_content is not None

    def layer_indices(self, num_hidden_states: int) -> list[int]:
        """Chosen hidden-state indices, made non-negative, checked against the encoder.

        `num_hidden_states` = encoder layers + 1 (index 0 is the embedding output).
        """
        if self.hidden_layer == "all":
            return list(range(1, num_hidden_states))
        raw = list(self.hidden_layer) if isinstance(self.hidden_layer, tuple) else [self.hidden_layer]
        resolved = []
        for index in raw:
            if not -num_hidden_states <= index < num_hidden_states:
                raise ValueError(
                    f"hidden_layer {index} is out of range for an encoder with {num_hidden_states - 1} layers "
                    f"(valid: {-num_hidden_states}..{num_hidden_states - 1})"
                )
            resolved.append(index % num_hidden_states)
        return resolved

    def with_overrides(self, overrides: dict[str, Any]) -> EncodingOptions:
        """A copy with some fields replaced; unknown keys are a user error."""
        check_keys(overrides, EncodingOptions, "encoding")
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


def check_keys(overrides: dict[str, Any], cls: type, what: str) -> None:
    """Reject keys that are not fields of `cls`, naming the valid ones."""
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown {what} option(s) {unknown}; valid: {sorted(valid)}")
