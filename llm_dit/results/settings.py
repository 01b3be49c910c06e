"""What each condition of a run *did*: its recorded settings, never its name.

A condition's meaning is its settings: the encoding options, the sampler
settings, the surgery specs and the prompt transform it ran with. The report's
sub-questions find their conditions here (``condition with a skip on the
context refiner``, ``condition with hidden_layer -1``) so that renaming a
condition never changes an answer.

Sources, per condition, first found wins:

* the results rows (what the images were made with): ``encoding`` (all
  EncodingOptions fields), the sampler columns (SamplerSettings fields at the
  top level of a row), ``surgery`` (the spec dicts), ``prompt_transform`` when
  the writer records it;
* study.json: the baseline ``encoding`` / ``sampler`` with the condition's
  overrides, its ``surgery`` and ``prompt_transform`` (conditions without rows,
  and the prompt transform for rows written before rows carried it).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from llm_dit.encoding.options import EncodingOptions
from llm_dit.sampling.settings import SamplerSettings
from surgery.spec import variant_class

ENCODING_KEYS = tuple(f.name for f in dataclasses.fields(EncodingOptions))
SAMPLER_KEYS = tuple(f.name for f in dataclasses.fields(SamplerSettings))
REFINER = "context_refiner"
DEFAULT_HIDDEN_LAYER = EncodingOptions().hidden_layer  # diffusers' choice (-2)
THINK_KEYS = ("encoding.force_think_block", "encoding.thinking_content")


@dataclass(frozen=True)
class ConditionSettings:
    """The resolved settings of one condition."""

    name: str
    encoding: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=dict)
    surgery: tuple[dict[str, Any], ...] = ()
    prompt_transform: str | None = None

    # -- flat view --------------------------------------------------------------------
    def flat(self) -> dict[str, Any]:
        """``{"encoding.<key>": v, "sampler.<key>": v, "surgery": ..., "prompt_transform": ...}``."""
        out: dict[str, Any] = {f"encoding.{k}": _canonical(v) for k, v in self.encoding.items()}
        out.update({f"sampler.{k}": _canonical(v) for k, v in self.sampler.items()})
        out["surgery"] = _canonical(list(self.surgery))
        out["prompt_transform"] = self.transform
        return out

    def differences(self, other: ConditionSettings) -> set[str]:
        """Flat keys whose values differ between the two conditions."""
        mine, theirs = self.flat(), other.flat()
        return {k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)}

    def fingerprint(self) -> str:
        """A stable text of every setting (equal settings, equal text; the name is left out)."""
        return json.dumps(self.flat(), sort_keys=True, default=str)

    # -- encoding ---------------------------------------------------------------------
    @property
    def hidden_layer(self) -> int | tuple[int, ...] | str:
        """The hidden layer: an int, a tuple of ints (a mix) or "all"; a one-element list is its int."""
        value = _canonical(self.encoding.get("hidden_layer", DEFAULT_HIDDEN_LAYER))
        return value[0] if isinstance(value, tuple) and len(value) == 1 else value

    @property
    def is_layer_mix(self) -> bool:
        return isinstance(self.hidden_layer, tuple) or self.hidden_layer == "all"

    @property
    def has_think_block(self) -> bool:
        return bool(self.encoding.get("force_think_block")) or self.encoding.get("thinking_content") is not None

    @property
    def thinking_content(self) -> str:
        return str(self.encoding.get("thinking_content") or "")

    @property
    def system_prompt(self) -> str:
        return str(self.encoding.get("system_prompt") or "")

    @property
    def long_prompt_mode(self) -> str | None:
        return self.encoding.get("long_prompt_mode")

    # -- prompt transform ---------------------------------------------------------------
    @property
    def transform(self) -> str | None:
        """The transform's name without an ``@<spaCy model>`` suffix; "baseline" counts as none."""
        if not self.prompt_transform:
            return None
        base = str(self.prompt_transform).partition("@")[0]
        return None if base == "baseline" else base

    # -- surgery ------------------------------------------------------------------------
    def specs(self, target: str = REFINER) -> list[dict[str, Any]]:
        return [s for s in self.surgery if s.get("target", REFINER) == target]

    def variants(self, target: str = REFINER) -> list[str]:
        return [str(s.get("variant")) for s in self.specs(target)]

    @property
    def refiner_untouched(self) -> bool:
        return not self.specs(REFINER)

    @property
    def refiner_skipped(self) -> bool:
        """Every context-refiner block bypassed: ``skip``, or ``truncate`` to 0 blocks."""
        return any(
            s.get("variant") == "skip" or (s.get("variant") == "truncate" and s.get("use_layers") == 0)
            for s in self.specs(REFINER)
        )

    @property
    def refiner_deeper(self) -> bool:
        """More context-refiner blocks run than the model has (``duplicate``)."""
        return "duplicate" in self.variants(REFINER)

    @property
    def refiner_layers_removed(self) -> bool:
        """Some but not all refiner blocks bypassed (per-layer ablation; ``truncate`` to >= 1 block)."""
        return any(
            s.get("variant") == "skip_layers" or (s.get("variant") == "truncate" and (s.get("use_layers") or 0) > 0)
            for s in self.specs(REFINER)
        )

    @property
    def style_adapter(self) -> dict[str, Any] | None:
        return next((s for s in self.specs(REFINER) if s.get("variant") == "style_adapter"), None)

    def describe(self, against: ConditionSettings | None = None, both: bool = False) -> str:
        """The settings that differ from ``against`` as text (``both``: "key=mine vs theirs").

        Without ``against``: the surgery and prompt transform, if any.
        """
        if against is None:
            keys = [k for k in ("surgery", "prompt_transform") if self.flat()[k] not in ((), None)]
        else:
            keys = sorted(self.differences(against))
        parts = []
        for key in keys:
            text = f"{key.removeprefix('encoding.').removeprefix('sampler.')}={self._value_text(key)}"
            if both and against is not None:
                text += f" vs {against._value_text(key)}"
            parts.append(text)
        return ", ".join(parts)

    def _value_text(self, key: str) -> str:
        if key == "surgery":
            return "[" + "; ".join(_spec_label(s) for s in self.surgery) + "]"
        return _short(self.flat().get(key))


def condition_settings(rows: list[dict[str, Any]], study: dict[str, Any], names: Iterable[str]) -> dict[str, ConditionSettings]:
    """Settings of each named condition, from its first results row and study.json."""
    specs = {c.get("name"): c for c in study.get("conditions", []) if isinstance(c, dict)}
    first_rows: dict[str, dict[str, Any]] = {}
    for row in rows:
        first_rows.setdefault(row.get("condition"), row)
    out = {}
    for name in names:
        row, spec = first_rows.get(name), specs.get(name) or {}
        encoding = {**(study.get("encoding") or {}), **(spec.get("encoding") or {})}
        sampler = {**(study.get("sampler") or {}), **(spec.get("sampler") or {})}
        surgery = list(spec.get("surgery") or [])
        transform = spec.get("prompt_transform")
        if row is not None:
            encoding = {**encoding, **(row.get("encoding") or {})}
            sampler = {**sampler, **{k: row[k] for k in SAMPLER_KEYS if k in row}}
            surgery = list(row.get("surgery") or surgery)
            transform = row.get("prompt_transform", transform)
        out[name] = ConditionSettings(
            name=name,
            encoding=encoding,
            sampler=sampler,
            surgery=tuple(_normalized_spec(s) for s in surgery if isinstance(s, dict)),
            prompt_transform=transform,
        )
    return out


def _normalized_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with its variant's defaults filled in (``target`` first), without running its checks.

    The checks may read files (a style adapter's folder) that a finished run no
    longer needs, so the defaults come from the registered dataclass fields.
    """
    out = {"target": REFINER, **spec}
    try:
        cls = variant_class(str(spec.get("variant")))
    except ValueError:
        return out
    for f in dataclasses.fields(cls):
        if f.name not in out and f.default is not dataclasses.MISSING:
            out[f.name] = f.default
    return out


def _canonical(value: Any) -> Any:
    """Lists become tuples and dicts sorted tuples, so settings compare and hash."""
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _canonical(v)) for k, v in value.items()))
    return value


def _spec_label(spec: dict[str, Any]) -> str:
    rest = ", ".join(f"{k}={v}" for k, v in spec.items() if k not in ("variant", "target"))
    target = spec.get("target", REFINER)
    return f"{spec.get('variant')}({target}{', ' + rest if rest else ''})"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
