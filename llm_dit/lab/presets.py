"""The shipped studies' conditions (configs/*.yaml) as presets for the lab's condition editor.

A condition in a study overrides that study's baseline, so a preset merges the two: what the
lab receives is the condition as it ran in its study (its size, steps, encoding included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from llm_dit.study import PROJECT_ROOT, Study


def shipped_presets(folder: str | Path | None = None) -> list[dict[str, Any]]:
    """[{config, name, condition}] for every condition of every predict config in `folder` (default configs/).

    Configs that hold no study (fit configs) are left out; so is a config that does not parse,
    with its name and reason in `skipped`-style entries: {config, error}.
    """
    folder = Path(folder) if folder is not None else PROJECT_ROOT / "configs"
    presets: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            study = _study_of(path)
        except (ValueError, TypeError, KeyError, yaml.YAMLError) as error:
            presets.append({"config": path.stem, "error": str(error).splitlines()[0]})
            continue
        if study is None:
            continue
        for condition in study.resolved_conditions():
            merged: dict[str, Any] = {"name": condition.name}
            for group in ("encoding", "sampler"):
                values = {**getattr(study, group), **getattr(condition, group)}
                if values:
                    merged[group] = values
            if condition.surgery:
                merged["surgery"] = list(condition.surgery)
            if condition.prompt_transform:
                merged["prompt_transform"] = condition.prompt_transform
            presets.append({"config": path.stem, "name": condition.name, "condition": merged})
    return presets


def _study_of(path: Path) -> Study | None:
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    data = config.get("data") or {}
    study = (data.get("init_args") or {}).get("study") if isinstance(data, dict) else None
    if not isinstance(study, dict):
        return None
    return Study(**study)
