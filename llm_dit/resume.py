"""Resume by settings: which earlier items a re-run may keep, and which it must make again.

An item's image is determined by its prompt, seed, encoding, sampler (size
included), surgery and the model (weights, dtype and the options that change
numerics). Each results row stores a fingerprint of those settings, so a re-run
matches rows on what produced them, never on the item id alone: a study whose
YAML changed (steps 4 -> 8, skip -> truncate, a new size) is stopped before any
model loads instead of silently keeping images made with the old settings.

A kept item also needs a readable PNG; an unreadable one is reported and the
item regenerated. Regenerated items keep the batch they were first generated in
(each row records its batch), so a resumed run makes the same pixels as an
uninterrupted one (see README, Determinism).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from llm_dit.module_settings import OPTION_PATHS, flat_options
from llm_dit.run_folder import RunFolderError
from llm_dit.study import StudyItem

#: Module options that change an image's pixels (cache_refiner and share_steps do not: bit-identical).
NUMERIC_OPTIONS = (
    "weights", "dtype", "tiny_seed", "text_encoder_override", "placement", "encoder_padding",
    "fp8", "attention_backend", "compile",
)
SAMPLER_FIELDS = ("steps", "shift", "guidance_scale", "negative_prompt", "height", "width", "skip_layer_guidance")


def canonical(value: Any) -> Any:
    """JSON-able form in which 3 and 3.0 (and tuples and lists) compare equal."""
    value = json.loads(json.dumps(value, default=str))
    return _integral_floats(value)


def _integral_floats(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral_floats(v) for k, v in value.items()}
    return value


def model_settings(pl_module: Any) -> dict[str, Any] | None:
    """The module's pixel-changing options (None for a module without ZImageModule's hparams)."""
    hparams = getattr(pl_module, "hparams", None)
    if hparams is None or "weights" not in hparams:
        return None
    options = flat_options(hparams)
    return canonical({name: options.get(name) for name in NUMERIC_OPTIONS})


def item_settings(item: StudyItem, model: dict[str, Any] | None) -> dict[str, Any]:
    """Everything that determines the item's image (the prompt transform acts through `prompt`)."""
    settings = {
        "prompt": item.prompt,
        "seed": item.seed,
        "encoding": item.encoding.to_dict(),
        "sampler": item.sampler.to_dict(),
        "surgery": list(item.surgery),
    }
    if model is not None:
        settings["model"] = model
    return canonical(settings)


def row_settings(row: dict[str, Any]) -> dict[str, Any]:
    """The same settings, read back from a results row (older rows carry no "model")."""
    settings = {
        "prompt": row.get("prompt"),
        "seed": row.get("seed"),
        "encoding": row.get("encoding"),
        "sampler": {name: row.get(name) for name in SAMPLER_FIELDS},
        "surgery": row.get("surgery"),
    }
    if row.get("model") is not None:
        settings["model"] = row["model"]
    return canonical(settings)


def fingerprint(settings: dict[str, Any]) -> str:
    text = json.dumps(canonical(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """'sampler.steps 4 -> 8' for each leaf that differs; a whole prompt or surgery list is one entry."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        name = f"{prefix}{OPTION_PATHS.get(key, key) if prefix == 'model.' else key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, prefix=f"{name}.")
        elif key == "prompt":
            out.append("prompt text")
        elif prefix == "" and key == "model" and a is None:
            continue  # a row from before model settings were recorded
        else:
            out.append(f"{name} {_short(a)} -> {_short(b)}")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def png_problem(path: Path, height: int | None = None, width: int | None = None) -> str | None:
    """Why the PNG at `path` cannot stand for a finished item (None when it can)."""
    try:
        with Image.open(path) as image:
            size = image.size
            image.verify()  # every chunk's CRC, through the end marker, without decompressing
    except FileNotFoundError:
        return "missing"
    except Exception as error:  # PIL raises many types for a damaged file
        return f"unreadable ({type(error).__name__}: {error})"
    if height is not None and width is not None and size != (width, height):
        return f"is {size[0]}x{size[1]}, expected {width}x{height}"
    return None


@dataclass
class ResumePlan:
    """What a run keeps from its folder.

    Attributes:
        finished: item id -> PNG, for items kept as they are.
        changed: condition -> what changed, for items whose settings differ from their row.
        regenerate: ids of rows that will be replaced (changed settings or a bad PNG).
        problems: one line per damaged file found.
        batches: item id -> the ids it was first generated with (from the rows).
    """

    finished: dict[str, Path] = field(default_factory=dict)
    changed: dict[str, list[str]] = field(default_factory=dict)
    regenerate: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    batches: dict[str, tuple[str, ...]] = field(default_factory=dict)


def plan_resume(
    folder: Path, items: list[StudyItem], rows: dict[str, dict[str, Any]], model: dict[str, Any] | None,
    check_images: bool = True,
) -> ResumePlan:
    """Compare the study's items with the folder's rows (see the module docstring)."""
    plan = ResumePlan()
    for row in rows.values():
        for item_id in row.get("batch") or ():
            plan.batches.setdefault(item_id, tuple(row["batch"]))
    for item in items:
        row = rows.get(item.item_id)
        if row is None:
            continue
        expected = item_settings(item, model)
        if row.get("settings_fingerprint") != fingerprint(expected):
            changes = differences(row_settings(row), expected)
            if changes:
                plan.changed.setdefault(item.condition, [])
                plan.changed[item.condition] += [c for c in changes if c not in plan.changed[item.condition]]
                plan.regenerate.add(item.item_id)
                continue
        path = folder / row.get("image", item.image_name)
        problem = png_problem(path, item.sampler.height, item.sampler.width) if check_images else None
        if problem is None and not path.is_file():
            problem = "missing"
        if problem is not None:
            if problem != "missing":
                plan.problems.append(f"{path.relative_to(folder)} {problem}: regenerating {item.item_id}")
                plan.regenerate.add(item.item_id)
            continue
        plan.finished[item.item_id] = path
    return plan


def changed_settings_error(folder: Path, changed: dict[str, list[str]], when: str = "") -> RunFolderError:
    """One line: which conditions changed how, and the two ways on."""
    parts = [f"{name!r} ({', '.join(changes[:3])}{', ...' if len(changes) > 3 else ''})" for name, changes in changed.items()]
    listed = "; ".join(parts[:4]) + (f"; and {len(parts) - 4} more" if len(parts) > 4 else "")
    return RunFolderError(
        f"run folder {folder} holds images made with other settings{when} for condition(s) {listed}; "
        "use a new run folder (another study name or --trainer.default_root_dir) or pass "
        "--data.init_args.overwrite_changed true to regenerate just those items"
    )


def model_fingerprint_changes(
    items: list[StudyItem], rows: dict[str, dict[str, Any]], current: str
) -> tuple[dict[str, list[str]], set[str]]:
    """Kept rows made by weights with another fingerprint: (condition -> what changed, their ids)."""
    changed: dict[str, list[str]] = {}
    ids = set()
    for item in items:
        recorded = rows.get(item.item_id, {}).get("model_fingerprint")
        if recorded is not None and recorded != current:
            changed.setdefault(item.condition, [f"model fingerprint {recorded} -> {current}"])
            ids.add(item.item_id)
    return changed, ids
