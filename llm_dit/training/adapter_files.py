"""An adapter on disk: `adapter.safetensors` (its tensors only) + `adapter.json` (what it is).

The JSON says which variant, its shape (rank, alpha, target modules, extra
blocks), which block list it replaces, and the base model's fingerprints, so a
loader can rebuild it without the training config and refuse the wrong base.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from llm_dit.errors import UserError, UserFacing
from llm_dit.models.single_file import read_safetensors_header
from llm_dit.training.config import ADAPTER_VARIANTS

ADAPTER_FORMAT = "llm-dit-style-adapter"
FORMAT_VERSION = 1
SPEC_NAME = "adapter.json"
TENSORS_NAME = "adapter.safetensors"


class MissingAdapterError(FileNotFoundError, UserFacing):
    """The adapter folder (or one of its two files) is not there."""


@dataclass
class AdapterSpec:
    """The JSON half of an exported adapter.

    Attributes:
        variant: "lora", "full" or "extra_blocks".
        base_fingerprint: llm_dit.models.fingerprint.model_fingerprint of the base transformer (no adapter).
        portable_fingerprint: the same, independent of the weights' dtype.
        base_blocks: number of blocks in the base target list.
        target: the block list the adapter replaces (the context refiner).
        rank, alpha, target_modules: LoRA shape (lora only).
        extra_blocks: number of appended blocks (extra_blocks only).
        info: provenance, for people: weights source, encoding options, resolution, steps.
    """

    variant: str
    base_fingerprint: str
    portable_fingerprint: str
    base_blocks: int
    target: str = "context_refiner"
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] | None = None
    extra_blocks: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    format: str = ADAPTER_FORMAT
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format != ADAPTER_FORMAT:
            raise ValueError(f"not an llm-dit style adapter (format {self.format!r}, expected {ADAPTER_FORMAT!r})")
        if self.version > FORMAT_VERSION:
            raise ValueError(f"adapter format version {self.version} is newer than this llm-dit ({FORMAT_VERSION}); update llm-dit")
        if self.variant not in ADAPTER_VARIANTS:
            raise ValueError(f"adapter variant {self.variant!r} unknown; expected one of {', '.join(ADAPTER_VARIANTS)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterSpec:
        """Unknown keys are ignored (newer minor additions); a foreign file or a missing field is an error."""
        if not isinstance(data, dict) or data.get("format") != ADAPTER_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not an llm-dit style adapter (format {found!r}, expected {ADAPTER_FORMAT!r})")
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"style adapter spec lacks {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def save_adapter(folder: str | Path, spec: AdapterSpec, tensors: dict[str, torch.Tensor]) -> Path:
    """Write `adapter.safetensors` + `adapter.json` into `folder`; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    save_file(contiguous, str(folder / TENSORS_NAME), metadata={"format": ADAPTER_FORMAT, "variant": spec.variant})
    (folder / SPEC_NAME).write_text(json.dumps(spec.to_dict(), indent=2, default=str) + "\n")
    return folder


def usage(shown_path: str) -> str:
    """How a predict study uses an adapter at `shown_path` (printed by `fit` and by the export tool)."""
    return f"use it in a study's conditions:\n  surgery: [{{variant: style_adapter, path: {shown_path}, scale: 1.0}}]"


def adapter_folder(path: str | Path) -> Path:
    """The folder of an adapter given as its folder, its adapter.json or its adapter.safetensors."""
    path = Path(path).expanduser()
    folder = path.parent if path.suffix in (".json", ".safetensors") else path
    missing = [name for name in (SPEC_NAME, TENSORS_NAME) if not (folder / name).is_file()]
    if missing:
        raise MissingAdapterError(
            f"style adapter {str(path)!r}: missing {', '.join(missing)} in {folder}; give the folder a fit wrote "
            "(lightning_logs/<run>/adapter)"
        )
    return folder


def load_adapter(path: str | Path) -> tuple[AdapterSpec, dict[str, torch.Tensor]]:
    """Read an adapter (CPU tensors); cached by path and modification time, so per-batch loads are free."""
    folder = adapter_folder(path).resolve()
    stamp = tuple((folder / n).stat().st_mtime_ns for n in (SPEC_NAME, TENSORS_NAME))
    return _load_cached(str(folder), stamp)


def read_spec(path: str | Path) -> AdapterSpec:
    """Only the JSON half (config-time checks)."""
    folder = adapter_folder(path)
    try:
        return AdapterSpec.from_dict(json.loads((folder / SPEC_NAME).read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise UserError(f"style adapter {folder / SPEC_NAME}: {error}; give the folder a fit wrote") from None


def read_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the safetensors header alone: a damaged file fails here, naming it."""
    header = read_safetensors_header(adapter_folder(path) / TENSORS_NAME)
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def adapter_width(shapes: dict[str, tuple[int, ...]]) -> int | None:
    """The width (`dim`) of the transformer an adapter was made for, read from its tensor shapes.

    Every variant holds a tensor that reads the block's input: LoRA's `lora_A` of an
    attention projection (rank x dim), or the projection itself (dim x dim).
    """
    for name, shape in sorted(shapes.items()):
        if ".attention.to_" in name and name.endswith(("lora_A.weight", "to_q.weight", "to_k.weight", "to_v.weight")):
            return int(shape[-1])
    return None


def check_fits(path: str | Path, transformer_config: dict[str, Any] | None) -> None:
    """Refuse an adapter whose shapes cannot belong to a transformer with this config, before it loads.

    Catches an adapter for another base model of another size; one for other weights of
    the same size is caught by its fingerprint when it is applied.
    """
    if not transformer_config:
        return
    spec, width = read_spec(path), adapter_width(read_shapes(path))
    dim, blocks = transformer_config.get("dim"), transformer_config.get("n_refiner_layers", 2)
    made_with = f" (it was trained on weights {spec.info['weights']!r})" if spec.info.get("weights") else ""
    if width is not None and dim is not None and width != int(dim):
        raise UserError(
            f"style adapter {str(path)!r} was made for a transformer of width {width}{made_with}, but this model's "
            f"is {dim}: it belongs to another base model; use it with the weights it was trained on, or fit one "
            "for these weights"
        )
    if spec.base_blocks != int(blocks):
        raise UserError(
            f"style adapter {str(path)!r} was made for a context refiner of {spec.base_blocks} blocks{made_with}, "
            f"this model has {blocks}: use it with the weights it was trained on"
        )


@lru_cache(maxsize=4)
def _load_cached(folder: str, stamp: tuple[int, int]) -> tuple[AdapterSpec, dict[str, torch.Tensor]]:
    read_shapes(folder)  # a damaged file is named, not a deserialization traceback
    return read_spec(folder), load_file(str(Path(folder) / TENSORS_NAME))
