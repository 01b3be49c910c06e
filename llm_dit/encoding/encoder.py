"""ZImageTextEncoder: prompt -> caption features for the Z-Image DiT, with the study knobs.

No encoder layer after the deepest requested hidden state is run (layer -2 of
36 skips the last layer and the final norm); that is exact, as a causal stack's
layer k never sees later layers.

Padding is a choice, because it is NOT free of numerical effects: GEMM and
attention kernels pick different blockings for different shapes, so the real
rows of a prompt padded to 512 differ in the last bits from the same prompt
encoded alone (measured: ~2e-8 abs on CPU fp32; on an H100 in bf16 with the
4B shape and random weights, ~3% relative at layer -2 after 35 layers of
compounding). So:

- padding="diffusers" (default): the prompt list is one batch, right-padded to
  `max_length` with an attention mask, exactly as `ZImagePipeline.encode_prompt`
  does: bit-identical to it for the same list of prompts.
- padding="none": each prompt alone, unpadded: less compute, and a prompt's
  features never depend on which other prompts share its batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen3Model

from llm_dit.encoding.compression import fit_to_length
from llm_dit.encoding.options import EncodingOptions
from llm_dit.encoding.template import SEGMENT_LABELS, TemplatedPrompt, tokenize_chat
from llm_dit.models.tiny import build_tiny_components, load_bundled_tokenizer
from surgery.hooks import HookRegistry

TINY_PRESET = "tiny"
TINY_RANDOM_PRESET = "tiny-random"
Padding = Literal["diffusers", "none"]
PADDING_MODES: tuple[str, ...] = ("diffusers", "none")
RMS_EPS = 1e-6
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


@dataclass
class EncodedPrompt:
    """One prompt's caption features and where each row came from.

    Attributes:
        embeddings: [L, D], what the DiT receives (after the long-prompt mode).
        token_ids: [T], every template token, before truncation or compression.
        tokens: each token decoded on its own (a multi-byte character split over
            several tokens shows as replacement characters).
        segments: per token, one of "system", "user", "think", "assistant", "template".
        text: the templated string.
        num_tokens: T.
        compressed: True when T > max_length, i.e. the long-prompt mode changed what
            the DiT sees (for "truncate" the rows are still tokens 0..L-1).
        row_segments: per embedding row, its segment label. Equal to `segments`
            when not compressed; for resampled modes a resampled row carries the
            label of the token at the centre of its window.
    """

    embeddings: torch.Tensor
    token_ids: torch.Tensor
    tokens: list[str]
    segments: list[str]
    text: str
    num_tokens: int
    compressed: bool
    row_segments: list[str]

    def segment_mask(self, segment: str) -> torch.Tensor:
        """Bool [L] mask of the embedding rows labelled `segment`."""
        if segment not in SEGMENT_LABELS:
            raise ValueError(f"unknown segment {segment!r}; choose one of {', '.join(SEGMENT_LABELS)}")
        return torch.tensor([label == segment for label in self.row_segments], device=self.embeddings.device)

    def segment_rows(self, segment: str) -> torch.Tensor:
        """Embedding rows of one segment, e.g. "user" to drop the template tokens.

        Uncompressed: exactly the rows of that segment's tokens. Truncated: those of
        its tokens that survived the cut. Resampled (interpolate/pool/attention_pool):
        the user rows are mixtures of user tokens and the kept template rows are
        exact, so "user" gives the resampled prompt and the others their tokens.
        """
        return self.embeddings[self.segment_mask(segment)]


class ZImageTextEncoder:
    """Qwen3 encoder + tokenizer that turns prompts into Z-Image caption features.

    `options` are the defaults of every `encode` call (diffusers' behaviour
    unless changed); a call may pass other options and/or field overrides.
    `padding` is "diffusers" (bit-identical to ZImagePipeline) or "none"
    (unpadded, one forward per prompt); see the module docstring.
    """

    def __init__(
        self,
        text_encoder: Qwen3Model,
        tokenizer: PreTrainedTokenizerBase,
        options: EncodingOptions | None = None,
        padding: Padding = "diffusers",
    ) -> None:
        if padding not in PADDING_MODES:
            raise ValueError(f"unknown padding {padding!r}; choose one of {', '.join(PADDING_MODES)}")
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.options = options or EncodingOptions()
        self.padding = padding
        self.options.layer_indices(self.num_hidden_states)  # fail at construction, not first encode

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str = TINY_PRESET,
        *,
        torch_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        options: EncodingOptions | None = None,
        padding: Padding = "diffusers",
        **option_overrides: Any,
    ) -> ZImageTextEncoder:
        """Load from "tiny", a Z-Image diffusers folder / hub id (text_encoder/ + tokenizer/),
        or a plain Qwen3 folder / hub id. Without a tokenizer there, the bundled Qwen3
        tokenizer (identical to Z-Image-Turbo's) is used. `option_overrides` are
        EncodingOptions fields, e.g. `hidden_layer=-3`.
        """
        options = (options or EncodingOptions()).with_overrides(option_overrides)
        if path_or_hub_id in (TINY_PRESET, TINY_RANDOM_PRESET):
            tiny = build_tiny_components(dtype=torch_dtype or torch.float32)
            text_encoder, tokenizer = tiny.text_encoder, tiny.tokenizer
        else:
            text_encoder = _load_qwen3(path_or_hub_id, torch_dtype)
            tokenizer = _load_tokenizer(path_or_hub_id)
        text_encoder.eval().requires_grad_(False)
        if device is not None:
            text_encoder.to(device)
        return cls(text_encoder, tokenizer, options, padding)

    @property
    def num_hidden_states(self) -> int:
        """Encoder layers + 1: index 0 is the embedding output, index N the final-normed output."""
        return len(self.text_encoder.layers) + 1

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    def encode(
        self, prompts: Sequence[str], options: EncodingOptions | None = None, **overrides: Any
    ) -> list[EncodedPrompt]:
        """Template, tokenize and encode each prompt; one EncodedPrompt per prompt, in order."""
        prompts = _checked_prompts(prompts)
        options = (options or self.options).with_overrides(overrides)
        indices = options.layer_indices(self.num_hidden_states)
        templated = [tokenize_chat(prompt, self.tokenizer, options) for prompt in prompts]
        # Truncating the ids (as diffusers does) equals cutting the rows, at less cost.
        limit = options.max_length if options.long_prompt_mode == "truncate" else None
        kept = [torch.tensor(t.token_ids[:limit], dtype=torch.long) for t in templated]
        with torch.no_grad():
            if self.padding == "diffusers":
                states = self._encode_padded(kept, indices, options.max_length)
            else:
                states = [self._encode_unpadded(ids, indices) for ids in kept]
        return [self._finish(t, s, options, indices) for t, s in zip(templated, states)]

    def hidden_states(
        self, input_ids: torch.Tensor, indices: Sequence[int], attention_mask: torch.Tensor | None = None
    ) -> dict[int, torch.Tensor]:
        """Hidden states [B, T, D] of `input_ids` [B, T] at non-negative `indices`, running no layer past the deepest.

        Index k < N is the raw output of layer k (0 = embeddings); N is the final-normed
        output, as in HF's `hidden_states`. Layers are shortened and the final norm made
        an identity only for the duration of the call.
        """
        depth = max(indices)
        captured: dict[int, torch.Tensor] = {}
        mask = None if attention_mask is None else attention_mask.to(self.device)
        with _truncated(self.text_encoder, depth), _capturing(self.text_encoder, set(indices) - {depth}, captured):
            output = self.text_encoder(input_ids=input_ids.to(self.device), attention_mask=mask, use_cache=False)
        captured[depth] = output.last_hidden_state
        return captured

    def _encode_unpadded(self, ids: torch.Tensor, indices: list[int]) -> dict[int, torch.Tensor]:
        return {k: v[0] for k, v in self.hidden_states(ids[None], indices).items()}

    def _encode_padded(self, kept: list[torch.Tensor], indices: list[int], max_length: int) -> list[dict[int, torch.Tensor]]:
        """One batch right-padded to max_length (or the longest prompt, if longer), as diffusers does."""
        width = max(max_length, *(len(ids) for ids in kept))
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(kept), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(kept), width), dtype=torch.bool)
        for row, ids in enumerate(kept):
            input_ids[row, : len(ids)], mask[row, : len(ids)] = ids, True
        states = self.hidden_states(input_ids, indices, mask)
        # Copies, so a cached prompt does not keep the whole padded batch alive.
        return [{k: v[row, : len(ids)].clone() for k, v in states.items()} for row, ids in enumerate(kept)]

    def _finish(
        self, templated: TemplatedPrompt, states: dict[int, torch.Tensor], options: EncodingOptions, indices: list[int]
    ) -> EncodedPrompt:
        mixed = combine_layers([states[i] for i in indices], options.layer_combine)
        segments = templated.segments[: mixed.shape[0]]
        fitted = fit_to_length(mixed, segments, options.max_length, options.long_prompt_mode)
        return EncodedPrompt(
            embeddings=fitted.embeddings,
            token_ids=torch.tensor(templated.token_ids, dtype=torch.long),
            tokens=self.tokenizer.batch_decode([[i] for i in templated.token_ids]),
            segments=templated.segments,
            text=templated.text,
            num_tokens=len(templated),
            compressed=len(templated) > options.max_length,
            row_segments=fitted.row_segments,
        )


def combine_layers(layers: list[torch.Tensor], how: str) -> torch.Tensor:
    """Mix [T, D] hidden states of several layers into one.

    A single layer is returned untouched (bit-exact). "mean" averages the layers;
    "normalized_mean" first divides each layer's per-token vector by its RMS
    (sqrt(mean(h^2) + 1e-6)) so that deep layers, whose activations are far
    larger, do not drown the others, then averages. Mixing runs in float32.
    """
    if len(layers) == 1:
        return layers[0]
    stacked = torch.stack(layers).float()
    if how == "normalized_mean":
        stacked = stacked * torch.rsqrt(stacked.pow(2).mean(dim=-1, keepdim=True) + RMS_EPS)
    elif how != "mean":
        raise ValueError(f"unknown layer_combine {how!r}; choose 'mean' or 'normalized_mean'")
    return stacked.mean(dim=0).to(layers[0].dtype)


@contextmanager
def _truncated(text_encoder: Qwen3Model, depth: int) -> Iterator[None]:
    """Keep only the first `depth` layers and skip the final norm, unless depth is the full stack.

    Module swaps through a `surgery.HookRegistry`, so they show in `surgery.live_hooks()`
    while an encode runs and the very same layer list and norm come back after it."""
    if depth >= len(text_encoder.layers):
        yield
        return
    with HookRegistry("encoder") as registry:
        registry.swap_child(text_encoder, "layers", nn.ModuleList(list(text_encoder.layers)[:depth]),
                            name=f"truncate layers to {depth}")
        registry.swap_child(text_encoder, "norm", nn.Identity(), name="skip final norm")
        yield


@contextmanager
def _capturing(text_encoder: Qwen3Model, indices: set[int], captured: dict[int, torch.Tensor]) -> Iterator[None]:
    """Record hidden state k (embedding output for 0, layer k's output otherwise) into `captured`.

    Own hooks rather than `output_hidden_states`: transformers installs its capture
    hooks once, on the layers present at that moment, which would be the truncated stack.
    Registered through a `surgery.HookRegistry` (removed on exit, listed while live).
    """

    def recorder(index: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            captured[index] = output[0] if isinstance(output, tuple) else output

        return hook

    with HookRegistry("encoder") as registry:
        for k in sorted(indices):
            module = text_encoder.embed_tokens if k == 0 else text_encoder.layers[k - 1]
            registry.add_forward_hook(module, recorder(k), name=f"hidden state {k}")
        yield


def _checked_prompts(prompts: Sequence[str] | str) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to encode: the prompt list is empty")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(f"prompt {i} is a {type(prompt).__name__}, not a string: {prompt!r}")
    return prompts


def _load_qwen3(source: str, torch_dtype: torch.dtype | None) -> Qwen3Model:
    """A Qwen3Model from a Z-Image folder (text_encoder/) or a plain Qwen3 folder or hub id."""
    kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
    path = Path(source).expanduser()
    if path.exists():
        if (path / "text_encoder" / "config.json").is_file():
            return Qwen3Model.from_pretrained(str(path), subfolder="text_encoder", **kwargs)
        if (path / "config.json").is_file():
            return Qwen3Model.from_pretrained(str(path), **kwargs)
        raise FileNotFoundError(f"{path} holds neither text_encoder/config.json (Z-Image) nor config.json (Qwen3)")
    try:
        return Qwen3Model.from_pretrained(source, subfolder="text_encoder", **kwargs)
    except OSError:
        return Qwen3Model.from_pretrained(source, **kwargs)


def _load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """The folder's tokenizer (tokenizer/ or top level), else the bundled Qwen3 one."""
    path = Path(source).expanduser()
    if path.exists():
        for folder in (path / "tokenizer", path):
            if any((folder / name).is_file() for name in TOKENIZER_FILES):
                return AutoTokenizer.from_pretrained(str(folder))
        return load_bundled_tokenizer()
    for subfolder in ("tokenizer", ""):
        try:
            return AutoTokenizer.from_pretrained(source, subfolder=subfolder)
        except (OSError, ValueError):
            continue
    return load_bundled_tokenizer()
