"""`surgery.apply`: put a list of specs on a model for the length of a `with` block."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from surgery.hooks import HookRegistry
from surgery.spec import SurgerySpec, parse_specs, validate_specs
from surgery.targets import block_counts, get_blocks


class SurgeryHandle:
    """Specs applied to one transformer; undone by `remove()` or on leaving `with`.

    The specs are applied when the handle is built (so `h = apply(...); ...;
    h.remove()` works for long-lived surgery, e.g. a training run), and if one of
    them fails, the ones already applied are undone before the error propagates.
    """

    def __init__(self, transformer: nn.Module, specs: Sequence[SurgerySpec | Mapping[str, Any]], name: str = "surgery") -> None:
        self.transformer = transformer
        # Validated against the model as it is now, so nested contexts check
        # indices against the list the outer context left.
        parsed = parse_specs(specs)
        self.specs = validate_specs(parsed, block_counts(transformer, tuple(spec.target for spec in parsed)))
        self.registry = HookRegistry(name)
        try:
            for spec in self.specs:
                spec.apply(transformer, self.registry)
        except BaseException:
            self.registry.remove()
            raise

    def __enter__(self) -> SurgeryHandle:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()

    def remove(self) -> None:
        """Undo this handle's changes (only those), newest first. Idempotent."""
        self.registry.remove()

    def blocks(self, target: str = "context_refiner") -> nn.ModuleList:
        """The target's block list as the surgery left it (e.g. identity_init's trainable copies)."""
        return get_blocks(self.transformer, target)

    def __repr__(self) -> str:
        labels = ", ".join(spec.label() for spec in self.specs) or "no surgery"
        return f"SurgeryHandle({labels}; {len(self.registry)} live changes)"


def apply(transformer: nn.Module, specs: Sequence[SurgerySpec | Mapping[str, Any]] | None) -> SurgeryHandle:
    """Apply `specs` (spec objects or dicts from YAML) to `transformer`; use as `with apply(...) as handle:`.

    An empty list is the baseline: nothing changes. Everything is undone on exit,
    exceptions included, and the state_dict, module ids and classes are exactly
    what they were.
    """
    return SurgeryHandle(transformer, specs or [])
