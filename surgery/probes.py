"""Probes: record what each block of a list gets and gives, without changing it.

`record_block_io` puts read-only forward hooks on the blocks (through the same
registry as the surgery, so they leave on exit); `embedding_drift` turns a
recording into per-item, per-block cosine similarity between each caption
token before and after the block: how much the refiner moves the encoder's
embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from surgery.hooks import HookRegistry
from surgery.targets import blocks_of, get_blocks


@dataclass
class BlockIO:
    """One block's call: hidden states in and out, and the batch mask (True = real row)."""

    index: int
    input: torch.Tensor
    output: torch.Tensor
    mask: torch.Tensor | None


class BlockIORecorder:
    """The records of one `record_block_io` context, in call order.

    Each transformer call runs every position of the list once, so records come
    in groups of `n_blocks`: `calls()[k][i]` is block i of the k-th call that
    ran the blocks (a refiner cache hit runs none and records none).
    """

    def __init__(self, target: str, n_blocks: int, device: torch.device | str | None) -> None:
        self.target = target
        self.n_blocks = n_blocks
        self.device = device
        self.records: list[BlockIO] = []

    def calls(self) -> list[list[BlockIO]]:
        n = self.n_blocks
        return [self.records[k : k + n] for k in range(0, len(self.records) - n + 1, n)]

    def hook(self, module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        # Skip gradient-checkpointing recomputes (they run inside backward) so a
        # training step records each block once, like an inference step.
        if _in_backward():
            return
        x = args[0] if args else kwargs["x"]
        mask = args[1] if len(args) > 1 else kwargs.get("attn_mask")
        index = len(self.records) % self.n_blocks
        self.records.append(BlockIO(index, self._keep(x), self._keep(output), self._keep(mask)))

    def _keep(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:
            return None
        tensor = tensor.detach()
        return tensor.to(self.device) if self.device is not None else tensor


@contextmanager
def record_block_io(
    transformer: nn.Module, target: str = "context_refiner", device: torch.device | str | None = None
) -> Iterator[BlockIORecorder]:
    """Record every block's input and output of `transformer.<target>` while the context is open.

    `device="cpu"` moves records off the accelerator (the real refiner's are
    B x L x 3840 per block). Enter it after structural surgery to see the
    blocks that actually run; a shared block (duplicate) is recorded at each of
    its positions.
    """
    blocks = blocks_of(get_blocks(transformer, target))
    recorder = BlockIORecorder(target, len(blocks), device)
    with HookRegistry(f"record_block_io:{target}") as registry:
        seen: set[int] = set()
        for position, block in enumerate(blocks):
            if id(block) in seen:  # shared duplicate: one hook fires at both positions
                continue
            seen.add(id(block))
            registry.add_forward_hook(block, recorder.hook, name=f"{target}.{position}", with_kwargs=True)
        yield recorder


def token_cosine(
    before: torch.Tensor, after: torch.Tensor, mask: torch.Tensor | None = None, lengths: Sequence[int] | None = None
) -> torch.Tensor:
    """Mean over valid rows of cos(before[b, l], after[b, l]); returns [B] float32 in [-1, 1].

    `mask` is the block's attention mask (True = real row; None = all real);
    `lengths` narrows further to the first lengths[b] rows (the caption tokens
    without the learned pad tokens diffusers appends up to a multiple of 32).
    """
    cosine = F.cosine_similarity(before.float(), after.float(), dim=-1, eps=1e-8).clamp(-1.0, 1.0)  # [B, L]
    valid = torch.ones_like(cosine, dtype=torch.bool) if mask is None else mask.to(cosine.device, torch.bool).clone()
    if lengths is not None:
        positions = torch.arange(cosine.shape[1], device=cosine.device)
        valid &= positions[None, :] < torch.as_tensor(list(lengths), device=cosine.device)[:, None]
    counts = valid.sum(dim=1).clamp(min=1)
    return (cosine * valid).sum(dim=1) / counts


@dataclass
class EmbeddingDrift:
    """Per-item drift of one transformer call.

    Attributes:
        per_block: [B, N] mean cosine of each token before vs after block i.
        end_to_end: [B] before the first block vs after the last.
        names: hook-point names of the N blocks, e.g. "context_refiner.0".
    """

    per_block: torch.Tensor
    end_to_end: torch.Tensor
    names: list[str]

    def __len__(self) -> int:
        return self.per_block.shape[0]

    def __getitem__(self, item: int) -> torch.Tensor:
        """Per-block values of one item (`drift[i]` -> [N])."""
        return self.per_block[item]

    def rows(self) -> list[dict[str, float]]:
        """One dict per item: {name: cosine, ..., "<target>.all": end-to-end} for tables and logs."""
        target = self.names[0].rsplit(".", 1)[0] if self.names else "blocks"
        return [
            {**{n: float(v) for n, v in zip(self.names, row)}, f"{target}.all": float(total)}
            for row, total in zip(self.per_block, self.end_to_end)
        ]


def embedding_drift(recorder: BlockIORecorder, call: int = 0, lengths: Sequence[int] | None = None) -> EmbeddingDrift:
    """Drift of the `call`-th recorded transformer call (0: the first step; with CFG the
    batch is [positive..., negative...]). `lengths`: see `token_cosine`."""
    calls = recorder.calls()
    if not calls:
        raise ValueError(f"no {recorder.target} call was recorded; run the transformer inside record_block_io")
    if not -len(calls) <= call < len(calls):
        raise ValueError(f"call {call} out of range; {len(calls)} calls were recorded")
    records = calls[call]
    per_block = torch.stack([token_cosine(r.input, r.output, r.mask, lengths) for r in records], dim=1)
    end_to_end = token_cosine(records[0].input, records[-1].output, records[0].mask, lengths)
    return EmbeddingDrift(per_block, end_to_end, [f"{recorder.target}.{r.index}" for r in records])


def _in_backward() -> bool:
    graph_task_id = getattr(torch._C, "_current_graph_task_id", None)
    return graph_task_id is not None and graph_task_id() != -1
