"""Surgery specs: declarative dataclasses that round-trip through plain dicts and YAML.

A study config says `{variant: truncate, use_layers: 1}`; jsonargparse hands us
that dict, `SurgerySpec.from_dict` picks the class registered for the variant
name, and `to_dict` gives the same dict back (all fields, defaults included), so
a run records exactly what it did. New variants register by name with
`@register_variant("name")` and need no change here.

Validation happens in two stages: field checks when a spec is built (no model
needed, so a study fails at config time), and `validate_specs` with the block
counts of the actual model (index ranges, conflicts between specs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from surgery.targets import DEFAULT_TARGET, check_target

if TYPE_CHECKING:
    from torch import nn

    from surgery.hooks import HookRegistry

VARIANTS: dict[str, type[SurgerySpec]] = {}

SpecT = TypeVar("SpecT", bound="type[SurgerySpec]")


def register_variant(name: str) -> Callable[[SpecT], SpecT]:
    """Class decorator: make a `SurgerySpec` subclass available as `{variant: name}`."""

    def decorate(cls: SpecT) -> SpecT:
        if name in VARIANTS and VARIANTS[name] is not cls:
            raise ValueError(f"surgery variant {name!r} is already registered by {VARIANTS[name].__name__}")
        cls.variant = name
        VARIANTS[name] = cls
        return cls

    return decorate


def variant_names() -> list[str]:
    return sorted(VARIANTS)


@dataclass(kw_only=True)
class SurgerySpec:
    """One change to one block list of a model.

    Attributes:
        target: dotted path to the block list (a ModuleList): context_refiner (default),
            noise_refiner, layers, or any other, e.g. Flux's transformer_blocks.
    """

    variant: ClassVar[str] = ""
    # Structural specs decide which blocks run; two of them on one target would
    # silently depend on their order, so `validate_specs` allows one per target.
    structural: ClassVar[bool] = True

    target: str = DEFAULT_TARGET

    def __post_init__(self) -> None:
        check_target(self.target)
        self.check()

    def check(self) -> None:
        """Static checks of the variant's own fields (no model needed); raise ValueError."""

    def validate(self, n_blocks: int) -> None:
        """Checks that need the target's block count (index ranges); raise ValueError."""

    def apply(self, transformer: nn.Module, registry: HookRegistry) -> None:
        """Make the change through `registry`, so that `registry.remove()` undoes it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement apply()")

    def label(self) -> str:
        """Short human-readable name, e.g. `truncate(context_refiner, use_layers=1)`."""
        fields = ", ".join(f"{k}={v}" for k, v in self.to_dict().items() if k not in ("variant", "target"))
        return f"{self.variant}({self.target}{', ' + fields if fields else ''})"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"variant": self.variant}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            data[field.name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | SurgerySpec) -> SurgerySpec:
        """Build the spec registered for `data["variant"]`; unknown keys and variants are errors."""
        if isinstance(data, SurgerySpec):
            return data
        if not isinstance(data, Mapping):
            raise ValueError(f"a surgery spec must be a mapping like {{variant: skip}}, got {data!r}")
        data = dict(data)
        name = data.pop("variant", cls.variant or None)
        if name is None:
            raise ValueError(f"surgery spec {data!r} has no 'variant'; valid variants: {', '.join(variant_names())}")
        spec_cls = variant_class(name)
        if cls is not SurgerySpec and not issubclass(spec_cls, cls):
            raise ValueError(f"{cls.__name__}.from_dict got variant {name!r}")
        allowed = [f.name for f in dataclasses.fields(spec_cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"surgery variant {name!r} has no option(s) {', '.join(unknown)}; its options: {', '.join(allowed)}")
        try:
            return spec_cls(**data)
        except TypeError as error:  # a required option is missing
            missing = [f.name for f in dataclasses.fields(spec_cls) if _required(f) and f.name not in data]
            raise ValueError(f"surgery variant {name!r} needs option(s) {', '.join(missing)}") from error


def variant_class(name: str) -> type[SurgerySpec]:
    if name not in VARIANTS:
        raise ValueError(f"unknown surgery variant {name!r}; valid variants: {', '.join(sorted(VARIANTS))}")
    return VARIANTS[name]


def parse_specs(items: Sequence[Mapping[str, Any] | SurgerySpec] | None) -> list[SurgerySpec]:
    """Turn a list of dicts (from YAML) into specs; specs pass through unchanged."""
    if items is None:
        return []
    if isinstance(items, (Mapping, SurgerySpec)):
        raise ValueError("surgery expects a list of specs, e.g. [{variant: skip}]; got a single spec")
    return [SurgerySpec.from_dict(item) for item in items]


def validate_specs(
    specs: Sequence[Mapping[str, Any] | SurgerySpec], n_blocks_by_target: Mapping[str, int] | None = None
) -> list[SurgerySpec]:
    """Check specs before a run; returns them parsed. Raises a one-line ValueError.

    Without block counts only static checks run (variant, target, field types,
    conflicts); with `n_blocks_by_target` (see `block_counts(transformer)`) index
    ranges and the presence of each target are checked too.
    """
    parsed = parse_specs(specs)
    if n_blocks_by_target is not None:
        for spec in parsed:
            if spec.target not in n_blocks_by_target:
                have = ", ".join(n_blocks_by_target) or "none"
                raise ValueError(f"{spec.label()}: this model has no block list {spec.target!r} (valid targets: {have})")
            spec.validate(int(n_blocks_by_target[spec.target]))
    by_target: dict[str, SurgerySpec] = {}
    for spec in parsed:
        if not spec.structural:
            continue
        if spec.target in by_target:
            raise ValueError(
                f"conflicting surgery specs: {by_target[spec.target].label()} and {spec.label()} both change "
                f"which {spec.target} blocks run; keep one per target (e.g. skip_layers with all the indices)"
            )
        by_target[spec.target] = spec
    return parsed


# Field checks shared by variants: messages name the option and the value.


def check_int(spec: SurgerySpec, option: str, value: Any, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"surgery variant {spec.variant!r}: {option} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"surgery variant {spec.variant!r}: {option} must be >= {minimum}, got {value}")


def check_bool(spec: SurgerySpec, option: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"surgery variant {spec.variant!r}: {option} must be true or false, got {value!r}")


def check_indices(spec: SurgerySpec, option: str, values: Any) -> list[int]:
    """A non-empty list of distinct non-negative ints; returned as a list (YAML may give tuples)."""
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"surgery variant {spec.variant!r}: {option} must be a non-empty list of block indices, got {values!r}")
    for value in values:
        check_int(spec, option, value, minimum=0)
    if len(set(values)) != len(values):
        raise ValueError(f"surgery variant {spec.variant!r}: {option} has repeated indices: {list(values)}")
    return list(values)


def check_index_range(spec: SurgerySpec, indices: Sequence[int], n_blocks: int) -> None:
    bad = [i for i in indices if not 0 <= i < n_blocks]
    if bad:
        raise ValueError(
            f"{spec.label()}: layer index {bad[0]} out of range; {spec.target} has {n_blocks} blocks, valid 0..{n_blocks - 1}"
        )


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


__all__ = ["VARIANTS", "SurgerySpec", "parse_specs", "register_variant", "validate_specs", "variant_names"]
