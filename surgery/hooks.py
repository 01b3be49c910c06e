"""The one mechanism under every change to a model: hooks, swaps and rebinds that are undone exactly.

A `HookRegistry` records each change it makes to a model together with the
action that undoes it:

- a forward hook or forward pre-hook (probes, the refiner cache's caption note);
- a child module swapped for another (surgery's block lists, fp8 linears, the
  encoder's truncated layer stack, the refiner cache);
- an instance `forward` bound over the class's (length grouping, compiled
  blocks, fused feed-forwards);
- an attribute set, a buffer added, or any other change with its own undo
  (`add_change`: attention processors, fused-weight caches).

`remove()` undoes them last-in-first-out, in a `finally` when the registry is
used as a context manager, and touches only what this registry added: an outer
context's hooks survive an inner context's exit, so contexts nest
(TransformerLens' habit). pyvene-style "pop every hook on every module" cleanup
would also remove hooks that belong to someone else.

Every live change is also listed in one process-wide table: `live_hooks()` shows
every change any registry has made and not undone (speed options included), and
`remove_all(model)` undoes all of those on a model, newest first, whoever made
them (diffusers' registry has no "remove all"). The table holds a registry, the
registry's undo actions hold the changed modules only weakly, so a model that is
dropped takes its entries with it (`live_hooks()` first collects garbage when the
table is not empty, as modules with bound forwards sit in reference cycles).

Gradient checkpointing (diffusers calls `checkpoint(block.__call__, ...)`,
non-reentrant) re-runs a block's `__call__` during backward: forward hooks that
are still registered fire again then, hooks removed before backward don't, and
the checkpoint only checks tensor shapes, so a hook that changed values and is
gone at recompute time gives silently wrong gradients. A swapped module is
captured by the checkpoint itself and recomputes identically. Hence: surgery
that changes outputs swaps modules; hooks are kept for read-only probes.
"""

from __future__ import annotations

import fnmatch
import gc
import itertools
import types
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

_ids = itertools.count()
_MISSING = object()


@dataclass(frozen=True)
class LiveChange:
    """One change a registry made and has not undone yet.

    Attributes:
        kind: forward_hook | forward_pre_hook | swap | forward | attribute | buffer | change.
        name: "<registry name>/<change name>", as `live_hooks()` prints it (after the kind).
        module: the changed module (the parent, for a swap), weakly.
        registry: the registry that can undo it.
    """

    kind: str
    name: str
    module: weakref.ReferenceType
    registry: HookRegistry


_LIVE: dict[int, LiveChange] = {}


@dataclass(eq=False)  # found by identity in its slot
class _Swap:
    original: nn.Module
    replacement: nn.Module


# (id(parent), child name) -> live swaps of that slot, oldest first.
_SLOTS: dict[tuple[int, str], list[_Swap]] = {}


def _collect_dead() -> None:
    if _LIVE:
        gc.collect()  # modules with bound forwards are in cycles; their weakref callbacks run here


def live_hooks(model: nn.Module | None = None) -> list[str]:
    """"kind:registry/name" of every change any registry made and has not undone (on `model` if given), oldest first."""
    _collect_dead()
    return [f"{change.kind}:{change.name}" for _, change in _changes(model)]


def count_live_hooks(model: nn.Module | None = None) -> int:
    """How many changes our registries hold right now (on `model` if given); 0 when everything was undone."""
    return len(live_hooks(model))


def remove_all(model: nn.Module | None = None, match: str | None = None) -> int:
    """Undo every live change (on `model`'s module tree if given; with `match`, those whose
    "registry/name" matches the glob), newest first, whoever made it. Returns how many.

    The one call that takes a model back to how it was loaded: surgery, probes, the
    refiner cache, the speed options. Module trees change as swaps are undone, so the
    tree is read again after each undo.
    """
    count, first_error = 0, None
    while True:
        found = [key for key, change in _changes(model) if match is None or fnmatch.fnmatchcase(change.name, match)]
        if not found:
            break
        key = found[-1]
        try:
            _LIVE[key].registry._undo_key(key)
        except BaseException as error:  # noqa: BLE001 - finish the cleanup, then report
            first_error = first_error or error
        _LIVE.pop(key, None)
        count += 1
    if first_error is not None:
        raise first_error
    return count


def _changes(model: nn.Module | None) -> list[tuple[int, LiveChange]]:
    items = sorted(_LIVE.items())
    if model is None:
        return items
    tree = {id(m) for m in model.modules()}
    return [(key, change) for key, change in items if id(change.module()) in tree]


def _put_back(target: nn.Module | None, attribute: str, previous: Any) -> None:
    """Undo of a set attribute or bound forward: the old value back, or none when there was none.
    A `(function,)` tuple is a method of the module itself, re-bound now (no strong reference kept)."""
    if target is None:  # the module is gone: nothing to undo
        return
    if previous is _MISSING:
        target.__dict__.pop(attribute, None)
    elif isinstance(previous, tuple):
        setattr(target, attribute, types.MethodType(previous[0], target))
    else:
        setattr(target, attribute, previous)


class HookRegistry:
    """Adds hooks, swaps and rebinds to a model and undoes exactly those, LIFO.

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
        slot_key = (id(parent), child)
        slot = _SLOTS.setdefault(slot_key, [])
        setattr(parent, child, replacement)
        slot.append(swap)
        parent_ref = weakref.ref(parent)

        def undo() -> None:
            position = slot.index(swap)
            target = parent_ref()
            if position == len(slot) - 1:
                if target is not None:
                    setattr(target, child, swap.original)
            else:
                slot[position + 1].original = swap.original
                warnings.warn(
                    f"surgery: {name} was removed out of order: a newer surgery on {child!r} was built on top of it "
                    "and stays in place until it is removed",
                    stacklevel=4,
                )
            slot.pop(position)
            if not slot and _SLOTS.get(slot_key) is slot:
                _SLOTS.pop(slot_key, None)

        def forget() -> None:  # the parent is gone: release the originals this slot kept
            if swap in slot:
                slot.remove(swap)
            if not slot and _SLOTS.get(slot_key) is slot:
                _SLOTS.pop(slot_key, None)

        self._track("swap", name, parent, undo, forget)
        return swap.original

    def bind_forward(self, module: nn.Module, function: Callable, *, name: str) -> None:
        """`module.forward = function` bound to `module` as an instance attribute (a bound method,
        so `copy.deepcopy` re-binds it to the copy); undo puts back the instance forward that was
        there before (usually none: the class's forward runs again)."""
        previous = module.__dict__.get("forward", _MISSING)
        if isinstance(previous, types.MethodType) and previous.__self__ is module:
            previous = (previous.__func__,)  # re-bound on undo: no strong reference to the module
        module.forward = types.MethodType(function, module)
        module_ref = weakref.ref(module)
        self._track("forward", name, module, lambda: _put_back(module_ref(), "forward", previous))

    def set_attribute(self, module: nn.Module, attribute: str, value: Any, *, name: str) -> None:
        """`setattr(module, attribute, value)` for a plain attribute; undo sets the old value back (or deletes it)."""
        previous = module.__dict__.get(attribute, _MISSING)
        setattr(module, attribute, value)
        module_ref = weakref.ref(module)
        self._track("attribute", name, module, lambda: _put_back(module_ref(), attribute, previous))

    def add_buffer(self, module: nn.Module, buffer: str, tensor: torch.Tensor | None, *, name: str, persistent: bool = False) -> None:
        """`module.register_buffer(buffer, tensor, persistent)` for a new buffer; undo deletes it."""
        if buffer in module._buffers:
            raise KeyError(f"{type(module).__name__} already has a buffer {buffer!r}")
        module.register_buffer(buffer, tensor, persistent=persistent)
        module_ref = weakref.ref(module)

        def undo() -> None:
            target = module_ref()
            if target is not None:
                target._buffers.pop(buffer, None)
                target._non_persistent_buffers_set.discard(buffer)

        self._track("buffer", name, module, undo)

    def add_change(self, module: nn.Module, undo: Callable[[], None], *, name: str) -> None:
        """A change made by the caller, with the action that undoes it (hold `module` weakly in it)."""
        self._track("change", name, module, undo)

    def remove(self) -> None:
        """Undo every change of this registry, newest first; keeps going past a failing undo."""
        self.remove_after(0)

    def remove_after(self, count: int) -> None:
        """Undo the changes made after the registry held `count` of them (`len(registry)`
        taken before a step), newest first: one step of a long-lived registry."""
        first_error: BaseException | None = None
        while len(self._undo) > count:
            key, _, undo = self._undo.pop()
            try:
                undo()
            except BaseException as error:  # noqa: BLE001 - finish the cleanup, then report
                first_error = first_error or error
            finally:
                _LIVE.pop(key, None)
        if first_error is not None:
            raise first_error

    def _undo_key(self, key: int) -> None:
        for position, (entry_key, _, undo) in enumerate(self._undo):
            if entry_key == key:
                del self._undo[position]
                undo()
                return

    def _forget(self, key: int) -> None:
        self._undo = [entry for entry in self._undo if entry[0] != key]

    def _track(
        self, kind: str, name: str, module: nn.Module, undo: Callable[[], None], on_forget: Callable[[], None] | None = None
    ) -> None:
        key = next(_ids)
        full_name = f"{self.name}/{name}"
        registry_ref = weakref.ref(self)

        def forget(_: weakref.ReferenceType) -> None:  # the module is gone: nothing left to undo
            _LIVE.pop(key, None)
            registry = registry_ref()
            if registry is not None:
                registry._forget(key)
            if on_forget is not None:
                on_forget()

        _LIVE[key] = LiveChange(kind, full_name, weakref.ref(module, forget), self)
        self._undo.append((key, full_name, undo))
