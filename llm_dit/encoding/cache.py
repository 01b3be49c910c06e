"""The prompt-embedding cache of a predict run: on the CPU, and only as long as it is needed.

Conditions that share an encoding (seeds, sampler sweeps, surgery) reuse one
encoding per prompt. Kept on the accelerator, and kept for the whole run, the
cache of a long-prompt study grows to gigabytes the DiT could use. So entries
live on the CPU (a batch copies its few captions to the device), and with a plan
(the items this process will generate) each entry is dropped after its last
planned use: the cache never holds more than the pending items need. Without a
plan (training's validation prompts, direct `generate` calls) entries stay, on
the CPU.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Iterator

import torch

from llm_dit.encoding.encoder import EncodedPrompt
from llm_dit.encoding.options import EncodingOptions

Key = tuple[str, EncodingOptions]


def item_keys(item) -> list[Key]:
    """The encodings one study item uses: its prompt, and the negative prompt when CFG is on."""
    keys = [(item.prompt, item.encoding)]
    if item.sampler.uses_cfg:
        keys.append((item.sampler.negative_prompt, item.encoding))
    return keys


class EmbeddingCache:
    """(prompt, encoding options) -> EncodedPrompt with CPU tensors; see the module docstring."""

    def __init__(self) -> None:
        self._entries: dict[Key, EncodedPrompt] = {}
        self._uses: Counter[Key] | None = None  # pending uses per key; None = no plan

    def plan(self, items: Iterable) -> None:
        """The items still to come (in any order): their entries are kept until they have all been
        released. Entries made before, without a plan (training's validation prompts), stay."""
        self._uses = Counter(key for item in items for key in item_keys(item))

    def release(self, items: Iterable) -> None:
        """`items` are done: drop the entries no pending item needs (only under a plan)."""
        if self._uses is None:
            return
        for item in items:
            for key in item_keys(item):
                self._uses[key] -= 1
                if self._uses[key] <= 0:
                    self._entries.pop(key, None)

    def end_plan(self) -> None:
        """Back to keeping every new entry (the plan's own entries left as their items finished)."""
        self._uses = None

    def __setitem__(self, key: Key, encoded: EncodedPrompt) -> None:
        if self._uses is not None and self._uses[key] <= 0:
            return  # a planned run that will not use it again: do not keep it
        self._entries[key] = to_cpu(encoded)

    def __getitem__(self, key: Key) -> EncodedPrompt:
        return self._entries[key]

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._entries)

    def values(self) -> Iterable[EncodedPrompt]:
        return self._entries.values()

    def clear(self) -> None:
        self._entries.clear()


def to_cpu(encoded: EncodedPrompt) -> EncodedPrompt:
    """A copy whose tensors live on the CPU (no copy when they already do)."""
    changes = {
        field.name: value.detach().cpu()
        for field in dataclasses.fields(encoded)
        if isinstance(value := getattr(encoded, field.name), torch.Tensor)
    }
    return dataclasses.replace(encoded, **changes)
