"""Bring a caption longer than `max_length` tokens down to exactly `max_length` rows.

Z-Image was trained on at most 512 template tokens; diffusers cuts the token ids
there (losing the end of the prompt and the closing template). The other modes
keep every token's information by resampling embeddings along the sequence.

Which rows are resampled: only the user prompt. The template tokens before it
(`<|im_start|>user\\n`, a system turn) and after it (`<|im_end|>\\n<|im_start|>assistant\\n`,
a think block, assistant text) are kept as they are, so the DiT still sees the
sequence start (the first token carries Qwen's huge attention-sink activation)
and the generation prompt it was trained with. When those kept rows alone reach
`max_length` (a very long system prompt, say), or there is no user token, the
whole sequence is resampled instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llm_dit.encoding.options import LONG_PROMPT_MODES

IMPORTANCE_EPS = 1e-6


@dataclass(frozen=True)
class FittedSequence:
    """Embeddings of exactly min(T, max_length) rows and one segment label per row.

    A resampled row is labelled with the segment of the input token at the
    centre of the window it came from (always "user" unless the whole sequence
    had to be resampled).
    """

    embeddings: torch.Tensor
    row_segments: list[str]


def fit_to_length(embeddings: torch.Tensor, segments: list[str], max_length: int, mode: str) -> FittedSequence:
    """Apply long-prompt `mode` to [T, D] `embeddings` when T > max_length; else return them as they are."""
    if mode not in LONG_PROMPT_MODES:
        raise ValueError(f"unknown long_prompt_mode {mode!r}; choose one of {', '.join(LONG_PROMPT_MODES)}")
    if len(segments) != embeddings.shape[0]:
        raise ValueError(f"{len(segments)} segment labels for {embeddings.shape[0]} embedding rows")
    total = embeddings.shape[0]
    if total <= max_length:
        return FittedSequence(embeddings, list(segments))
    if mode == "truncate":
        return FittedSequence(embeddings[:max_length], list(segments[:max_length]))
    start, end = _resampled_region(segments, max_length)
    target = max_length - (total - (end - start))
    resampled = RESAMPLERS[mode](embeddings[start:end].float(), target).to(embeddings.dtype)
    rows = torch.cat([embeddings[:start], resampled, embeddings[end:]])
    labels = segments[:start] + _window_labels(segments[start:end], target) + segments[end:]
    return FittedSequence(rows, labels)


def interpolate(x: torch.Tensor, length: int) -> torch.Tensor:
    """Linear resampling of [n, D] rows to `length` rows; first and last rows are kept (align_corners)."""
    return F.interpolate(x.T[None], size=length, mode="linear", align_corners=True)[0].T


def pool(x: torch.Tensor, length: int) -> torch.Tensor:
    """Adaptive average pooling of [n, D] rows to `length` windows (torch's window bounds)."""
    return F.adaptive_avg_pool1d(x.T[None], length)[0].T


def attention_pool(x: torch.Tensor, length: int) -> torch.Tensor:
    """Importance-weighted pooling of [n, D] rows over the same windows as `pool`.

    Importance of a token = L2 norm of its deviation from the mean row of `x`
    (tokens that stand out from the prompt's average carry more of its content;
    no attention weights are needed, which SDPA/flash kernels don't return).
    Importances are standardized over `x` (zero mean, unit std) so the weighting
    does not depend on the layer's scale; each output row is the softmax(importance)
    weighted average of the tokens in its window. Equal importances give `pool`.
    """
    importance = (x - x.mean(dim=0)).norm(dim=1)
    importance = (importance - importance.mean()) / (importance.std() + IMPORTANCE_EPS)
    return pool_weights(x.shape[0], length, importance) @ x


def pool_weights(n: int, length: int, logits: torch.Tensor | None = None) -> torch.Tensor:
    """[length, n] matrix: row j is softmax(`logits`) over adaptive-pool window j, zero outside it."""
    logits = torch.zeros(n) if logits is None else logits
    j = torch.arange(length)
    starts, ends = (j * n) // length, ((j + 1) * n + length - 1) // length
    i = torch.arange(n, device=logits.device)
    inside = (i[None] >= starts[:, None].to(i.device)) & (i[None] < ends[:, None].to(i.device))
    return torch.softmax(logits[None].expand(length, n).masked_fill(~inside, float("-inf")), dim=1)


RESAMPLERS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "interpolate": interpolate,
    "pool": pool,
    "attention_pool": attention_pool,
}


def _resampled_region(segments: list[str], max_length: int) -> tuple[int, int]:
    """[start, end) of the user rows, or of everything when the kept rows leave no room."""
    user = [i for i, label in enumerate(segments) if label == "user"]
    if user:
        start, end = user[0], user[-1] + 1
        if len(segments) - (end - start) < max_length:
            return start, end
    return 0, len(segments)


def _window_labels(segments: list[str], length: int) -> list[str]:
    n = len(segments)
    return [segments[min(n - 1, (2 * j + 1) * n // (2 * length))] for j in range(length)]
