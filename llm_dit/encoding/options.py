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
                    f"encoding.{name} must be text, got {type(value).__name__} {value!r} "
                    "(in YAML, quote text that contains ': ')"
                )
        if not isinstance(self.force_think_block, bool):
            raise ValueError(f"encoding.force_think_block must be true or false, got {self.force_think_block!r}")
        if self.long_prompt_mode not in LONG_PROMPT_MODES:
            raise ValueError(
                f"encoding.long_prompt_mode {self.long_prompt_mode!r} is unknown; choose one of {', '.join(LONG_PROMPT_MODES)}"
            )
        if self.layer_combine not in LAYER_COMBINES:
            raise ValueError(
                f"encoding.layer_combine {self.layer_combine!r} is unknown; choose one of {', '.join(LAYER_COMBINES)}"
            )
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 1:
            raise ValueError(f"encoding.max_length must be an integer >= 1, got {self.max_length!r}; diffusers uses 512")
        self._check_hidden_layer()

    def _check_hidden_layer(self) -> None:
        forms = "an integer (e.g. -2), a non-empty list of integers (e.g. [-1, -2]) or 'all'"
        layer = self.hidden_layer
        if isinstance(layer, (list, tuple)):
            if not layer:
                raise ValueError(f"encoding.hidden_layer is an empty list; give {forms}")
            if any(isinstance(i, bool) or not isinstance(i, int) for i in layer):
                raise ValueError(f"encoding.hidden_layer {list(layer)!r} holds a non-integer; give {forms}")
            object.__setattr__(self, "hidden_layer", tuple(layer))
        elif isinstance(layer, str):
            if layer != "all":
                raise ValueError(f"encoding.hidden_layer {layer!r} is not a layer form; give {forms}")
        elif isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(f"encoding.hidden_layer {layer!r} is not a layer form; give {forms}")

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
                    f"encoding.hidden_layer {index} is out of range for an encoder with {num_hidden_states - 1} "
                    f"layers (valid: {-num_hidden_states}..{num_hidden_states - 1}); diffusers uses -2"
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
        hint = _closest(unknown[0], valid)
        raise ValueError(
            f"unknown {what} option(s) {', '.join(map(repr, unknown))}{hint}; valid: {', '.join(sorted(valid))}"
        )


def _closest(name: str, valid: set[str]) -> str:
    """", did you mean 'steps'?" for a misspelling, else ''."""
    import difflib

    match = difflib.get_close_matches(name, sorted(valid), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""
