"""The one mechanism under every surgery: hooks and module swaps that are undone exactly.

A `HookRegistry` records each change it makes to a model (a forward hook, a
forward pre-hook, a child module swapped for another) together with the action
that undoes it. `remove()` undoes them last-in-first-out, in a `finally` when the
registry is used as a context manager, and touches only what this registry
added: an outer context's hooks survive an inner context's exit, so contexts
nest (TransformerLens' habit). pyvene-style "pop every hook on every module"
cleanup would also remove hooks that belong to someone else.

Every live change is also listed in a process-wide table, so tests (and users
chasing a leak) can check that `count_live_hooks()` is back to zero.

Gradient checkpointing (diffusers calls `checkpoint(block.__call__, ...)`,
non-reentrant) re-runs a block's `__call__` during backward: forward hooks that
are still registered fire again then, hooks removed before backward don't, and
the checkpoint only checks tensor shapes, so a hook that changed values and is
gone at recompute time gives silently wrong gradients. A swapped module is
captured by the checkpoint itself and recomputes identically. Hence: surgery
that changes outputs swaps modules; hooks are kept for read-only probes.
"""

from __future__ import annotations

import itertools
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

_ids = itertools.count()


@dataclass(frozen=True)
class LiveChange:
    """One change a registry made and has not undone yet (for leak checks)."""

    kind: str  # "forward_hook" | "forward_pre_hook" | "swap"
    name: str
    module: weakref.ReferenceType


_LIVE: dict[int, LiveChange] = {}


@dataclass(eq=False)  # found by identity in its slot
class _Swap:
    original: nn.Module
    replacement: nn.Module


# (id(parent), child name) -> live swaps of that slot, oldest first.
_SLOTS: dict[tuple[int, str], list[_Swap]] = {}


def live_hooks() -> list[str]:
    """Descriptions of every hook and swap added by any registry and not yet undone."""
    return [f"{change.kind}:{change.name}" for change in _LIVE.values()]


def count_live_hooks() -> int:
    """How many hooks and swaps our registries hold right now; 0 when every context exited."""
    return len(_LIVE)


class HookRegistry:
    """Adds hooks and module swaps to a model and undoes exactly those, LIFO.

    Usable as a context manager (undo on exit, exceptions included) or by hand
    (`remove()`, idempotent). `name` prefixes every entry, for `live_hooks()`.
    """

    def __init__(self, name: str = "surgery") -> None:
        self.name = name
        self._undo: list[tuple[int, str, Callable[[], None]]] = []

    def __enter__(self) -> HookRegistry:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()

    def __len__(self) -> int:
        return len(self._undo)

    def entries(self) -> list[str]:
        """Names of this registry's live changes, oldest first."""
        return [name for _, name, _ in self._undo]

    def add_forward_hook(self, module: nn.Module, hook: Callable, *, name: str, with_kwargs: bool = False) -> None:
        """`module.register_forward_hook(hook)`, removed by `remove()`."""
        handle = module.register_forward_hook(hook, with_kwargs=with_kwargs)
        self._track("forward_hook", name, module, handle.remove)

    def add_forward_pre_hook(self, module: nn.Module, hook: Callable, *, name: str, with_kwargs: bool = False) -> None:
        """`module.register_forward_pre_hook(hook)`, removed by `remove()`."""
        handle = module.register_forward_pre_hook(hook, with_kwargs=with_kwargs)
        self._track("forward_pre_hook", name, module, handle.remove)

    def swap_child(self, parent: nn.Module, child: str, replacement: nn.Module, *, name: str) -> nn.Module:
        """Put `replacement` where `parent.<child>` is (a ModuleList item: child "3"); returns the original.

        Undo puts the very same original object back, so module ids, classes and
        the state_dict are what they were. Swaps of one slot form a stack; if one
        is undone while a newer swap of the slot is still live (contexts closed
        out of order), the newer one inherits its original and stays in place
        until it is undone itself, so the last undo still restores the model.
        """
        if child not in parent._modules:
            raise KeyError(f"{type(parent).__name__} has no child module {child!r}")
        swap = _Swap(parent._modules[child], replacement)
        slot = _SLOTS.setdefault((id(parent), child), [])
        setattr(parent, child, replacement)
        slot.append(swap)

        def undo() -> None:
            position = slot.index(swap)
            if position == len(slot) - 1:
                setattr(parent, child, swap.original)
            else:
                slot[position + 1].original = swap.original
                warnings.warn(
                    f"surgery: {name} was removed out of order: a newer surgery on {child!r} was built on top of it "
                    "and stays in place until it is removed",
                    stacklevel=4,
                )
            slot.pop(position)
            if not slot:
                _SLOTS.pop((id(parent), child), None)

        self._track("swap", name, parent, undo)
        return swap.original

    def remove(self) -> None:
        """Undo every change of this registry, newest first; keeps going past a failing undo."""
        first_error: BaseException | None = None
        while self._undo:
            key, _, undo = self._undo.pop()
            try:
                undo()
            except BaseException as error:  # noqa: BLE001 - finish the cleanup, then report
                first_error = first_error or error
            finally:
                _LIVE.pop(key, None)
        if first_error is not None:
            raise first_error

    def _track(self, kind: str, name: str, module: nn.Module, undo: Callable[[], None]) -> None:
        key = next(_ids)
        full_name = f"{self.name}/{name}"
        _LIVE[key] = LiveChange(kind, full_name, weakref.ref(module))
        self._undo.append((key, full_name, undo))
