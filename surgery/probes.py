"""Probes: record what each block of a list gets and gives, without changing it.

The hidden states (and mask) are read by argument name from the block-class table in
`surgery.blocks`, so the same probe records Z-Image, Flux and SD3 blocks (for
two-stream blocks: the image stream, `hidden_states`).

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

from surgery.blocks import hidden_input, hidden_output
from surgery.discover import NamesFilter, matching_modules
from surgery.hooks import HookRegistry
from surgery.targets import blocks_of, get_blocks


@dataclass
class BlockIO:
    """One block's call: hidden states in and out, and the batch mask (True = real row).

    `call` counts the calls of the recorded transformer (from 0); `rows` are the rows of
    that call this record holds, in order (None: all of them), for a wrapper that runs a
    call as sub-batches (length grouping) and marks them with `sub_batch`.
    """

    index: int
    input: torch.Tensor
    output: torch.Tensor
    mask: torch.Tensor | None
    call: int = 0
    rows: tuple[int, ...] | None = None


_SUB_BATCH = "_surgery_sub_batch_rows"


@contextmanager
def sub_batch(module: nn.Module, rows: Sequence[int]) -> Iterator[None]:
    """Mark what runs inside as rows `rows` of `module`'s current call.

    For wrappers that split one call of `module` into several forwards (the
    sub-forwards bypass `module.__call__`, so they are one call for its hooks):
    probes then put each record's rows back at their places in the whole batch.
    """
    previous = module.__dict__.get(_SUB_BATCH)
    module.__dict__[_SUB_BATCH] = tuple(int(r) for r in rows)
    try:
        yield
    finally:
        if previous is None:
            module.__dict__.pop(_SUB_BATCH, None)
        else:
            module.__dict__[_SUB_BATCH] = previous


def sub_batch_rows(module: nn.Module) -> tuple[int, ...] | None:
    """The rows of the current call that `module` is running now (None: the whole call)."""
    return module.__dict__.get(_SUB_BATCH)


class BlockIORecorder:
    """The records of one `record_block_io` context, in call order.

    Every pass over the block list records `n_blocks` records (`runs()`). A call of
    the recorded module runs the list once, or once per sub-batch when a wrapper
    splits the call (length grouping); `calls()` groups the runs by call. A refiner
    cache hit runs no blocks and records nothing.
    """

    def __init__(self, target: str, n_blocks: int, device: torch.device | str | None, root: nn.Module | None = None) -> None:
        self.target = target
        self.n_blocks = n_blocks
        self.device = device
        self.root = root
        self.records: list[BlockIO] = []
        self.call_sizes: list[int | None] = []  # batch size of each call of `root`

    def runs(self) -> list[list[BlockIO]]:
        """Each pass over the block list: `runs()[k][i]` is block i of the k-th pass."""
        n = self.n_blocks
        return [self.records[k : k + n] for k in range(0, len(self.records) - n + 1, n)]

    def calls(self) -> list[list[list[BlockIO]]]:
        """The runs of each call of the recorded module that ran the blocks, in call order:
        `calls()[k]` holds one run, or one per sub-batch of a split call."""
        grouped: dict[int, list[list[BlockIO]]] = {}
        for run in self.runs():
            grouped.setdefault(run[0].call, []).append(run)
        return list(grouped.values())

    def call_size(self, call: int) -> int | None:
        """How many rows the `call`-th call of the recorded module had (None if unknown)."""
        return self.call_sizes[call] if 0 <= call < len(self.call_sizes) else None

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """A new call of the recorded module: later records belong to it."""
        x = args[0] if args else kwargs.get("x", kwargs.get("hidden_states"))
        if isinstance(x, (list, tuple)):
            size = len(x)
        else:
            size = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() > 0 else None
        self.call_sizes.append(size)

    def hook(self, module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        # Skip gradient-checkpointing recomputes (they run inside backward) so a
        # training step records each block once, like an inference step.
        if _in_backward():
            return
        x, mask = hidden_input(module, args, kwargs)  # which argument is which: surgery.blocks
        index = len(self.records) % self.n_blocks
        call = max(len(self.call_sizes) - 1, 0)
        rows = sub_batch_rows(self.root) if self.root is not None else None
        out = hidden_output(module, output)
        self.records.append(BlockIO(index, self._keep(x), self._keep(out), self._keep(mask), call, rows))

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
    its positions. A pre-hook on `transformer` numbers its calls, so a call split
    into sub-batches (see `sub_batch`) is still one call.
    """
    blocks = blocks_of(get_blocks(transformer, target))
    recorder = BlockIORecorder(target, len(blocks), device, root=transformer)
    with HookRegistry(f"record_block_io:{target}") as registry:
        registry.add_forward_pre_hook(transformer, recorder.pre_hook, name="calls", with_kwargs=True)
        seen: set[int] = set()
        for position, block in enumerate(blocks):
            if id(block) in seen:  # shared duplicate: one hook fires at both positions
                continue
            seen.add(id(block))
            registry.add_forward_hook(block, recorder.hook, name=f"{target}.{position}", with_kwargs=True)
        yield recorder


@dataclass
class Activations:
    """What the modules matched by a names filter got and gave, one entry per call, in call order.

    Attributes:
        inputs: name -> the first tensor argument of each call (positional, else keyword).
        outputs: name -> each call's output (tensors detached; tuples kept as tuples).
    """

    inputs: dict[str, list[torch.Tensor | None]]
    outputs: dict[str, list[object]]

    @property
    def names(self) -> list[str]:
        return list(self.outputs)


@contextmanager
def record_activations(
    model: nn.Module, names: NamesFilter, device: torch.device | str | None = None
) -> Iterator[Activations]:
    """Record the input and output of every module whose dotted name matches `names` (a glob
    like "layers.*.attention", a list of them, or a predicate; see `surgery.hook_points`)
    while the context is open: attention, feed-forward, norms, the caption embedder, the
    final layer, whole blocks. Read-only forward hooks through one `HookRegistry`."""
    found = matching_modules(model, names)
    activations = Activations({name: [] for name, _ in found}, {name: [] for name, _ in found})

    def keep(value: object) -> object:
        if isinstance(value, torch.Tensor):
            value = value.detach()
            return value.to(device) if device is not None else value
        if isinstance(value, (tuple, list)):
            return type(value)(keep(v) for v in value)
        return value

    def recorder(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            if _in_backward():
                return
            first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
            activations.inputs[name].append(keep(first))
            activations.outputs[name].append(keep(output))

        return hook

    with HookRegistry("record_activations") as registry:
        for name, module in found:
            registry.add_forward_hook(module, recorder(name), name=name, with_kwargs=True)
        yield activations


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
    """Drift of every row of the `call`-th recorded transformer call (0: the first step; with
    CFG the batch is [positive..., negative...]).

    A call split into sub-batches (length grouping) is put back together by the rows each
    sub-batch ran. `lengths`: one per row of the call, the caption tokens to count in each
    row (see `token_cosine`; the context refiner's rows past a caption's length are Z-Image's
    learned pad tokens). Without them every unmasked row counts.
    """
    calls = recorder.calls()
    if not calls:
        raise ValueError(f"no {recorder.target} call was recorded; run the transformer inside record_block_io")
    if not -len(calls) <= call < len(calls):
        raise ValueError(f"call {call} out of range; {len(calls)} calls were recorded")
    runs = calls[call]
    placed = [(run, run[0].rows if run[0].rows is not None else tuple(range(run[0].input.shape[0]))) for run in runs]
    size = recorder.call_size(runs[0][0].call) or 1 + max(max(rows) for _, rows in placed)
    if lengths is not None and len(lengths) != size:
        raise ValueError(f"lengths has {len(lengths)} values; the recorded call has {size} rows (give one per row)")
    names = [f"{recorder.target}.{r.index}" for r in runs[0]]
    per_block = torch.full((size, len(names)), float("nan"))
    end_to_end = torch.full((size,), float("nan"))
    for run, rows in placed:
        run_lengths = None if lengths is None else [lengths[r] for r in rows]
        index = torch.tensor(rows)
        per_block[index] = torch.stack([token_cosine(r.input, r.output, r.mask, run_lengths).cpu() for r in run], dim=1)
        end_to_end[index] = token_cosine(run[0].input, run[-1].output, run[0].mask, run_lengths).cpu()
    missing = [i for i in range(size) if torch.isnan(end_to_end[i])]
    if missing:
        raise ValueError(
            f"rows {missing} of call {call} ran no {recorder.target} blocks (served by the refiner cache?); "
            "record with a fresh cache or read another call"
        )
    return EmbeddingDrift(per_block, end_to_end, names)


def _in_backward() -> bool:
    graph_task_id = getattr(torch._C, "_current_graph_task_id", None)
    return graph_task_id is not None and graph_task_id() != -1
