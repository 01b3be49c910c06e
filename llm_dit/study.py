"""A study = prompts x seeds x conditions. This module turns its YAML spec into items.

A condition is a named set of overrides of the study's baseline: encoding
options, sampler settings, surgery specs and a prompt transform. Variables give
sweeps (one variable) or full grids (several). Every item has a stable id, so a
re-run finds what is already done and so results from different runs line up.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import surgery
from llm_dit.encoding.long_prompt_generator import generate_prompts
from llm_dit.encoding.manipulations import get_prompt_transform
from llm_dit.encoding.options import EncodingOptions
from llm_dit.encoding.prompt_spec import PromptSpec
from llm_dit.sampling.settings import SamplerSettings

STUDY_KINDS = (
    "hidden_layer",
    "think_block",
    "refiner",
    "shift_steps",
    "long_prompt",
    "token_importance",
    "system_prompt",
    "custom",
)
VARIABLE_GROUPS = ("encoding", "sampler")
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 0..2**64-1 (a negative seed would wrap around)
NAME_CHARACTERS = r"A-Za-z0-9._=,+\-"  # '+' joins list values in grid names (hidden_layer=-1+-2)


@dataclass
class ConditionSpec:
    """A named set of overrides of the study's baseline.

    Attributes:
        name: shown in tables, TensorBoard and file names.
        encoding: overrides of EncodingOptions, e.g. {hidden_layer: -3}.
        sampler: overrides of SamplerSettings, e.g. {shift: 2.0, steps: 12}.
        surgery: surgery specs as dicts, e.g. [{variant: skip}].
        prompt_transform: name of a prompt manipulation (token-importance study).
        variables: the values this condition stands for, for plots and tables;
            filled from the overrides when left empty.
    """

    name: str
    encoding: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=dict)
    surgery: list[dict[str, Any]] = field(default_factory=list)
    prompt_transform: str | None = None
    variables: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyItem:
    """One image to generate: a prompt, a seed and a fully resolved condition."""

    item_id: str
    study: str
    condition: str
    condition_index: int
    prompt_index: int
    prompt: str
    original_prompt: str
    prompt_type: str | None
    seed: int
    encoding: EncodingOptions
    sampler: SamplerSettings
    surgery: tuple[dict[str, Any], ...] = ()
    prompt_transform: str | None = None
    variables: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def image_name(self) -> str:
        """Relative PNG path; derived from condition, prompt index and seed, never prompt text."""
        return f"images/{self.item_id}.png"

    def batch_key(self) -> tuple:
        """Items sharing this key can be generated in one batch."""
        return (self.condition_index, self.sampler.height, self.sampler.width)


@dataclass
class Study:
    """The whole experiment.

    Attributes:
        name: run folder name under lightning_logs/ (re-running resumes there).
        kind: which seed study this is; picks the report's sub-question sections.
        prompts: inline prompts, strings or {text, type, metadata}.
        prompts_file: a .txt (one prompt per line, optional "type | prompt") or .json/.yaml list.
        prompt_generator: built-in prompt generator, e.g. {kind: long_prompt, ...}.
        seeds: each prompt is generated once per seed and condition.
        encoding / sampler: the baseline every condition overrides.
        control: name of the control condition (added with no overrides if absent).
        conditions: explicit conditions.
        variables: sweeps/grids, keys "sampler.shift", "encoding.hidden_layer", ...;
            several keys give the full grid.
        transform_seed: seeds the prompt manipulations (shuffles) reproducibly.
    """

    name: str = "baseline"
    kind: str = "custom"
    prompts: list[str | PromptSpec] = field(default_factory=list)
    prompts_file: str | None = None
    prompt_generator: dict[str, Any] | None = None
    seeds: list[int] = field(default_factory=lambda: [42])
    encoding: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=dict)
    control: str = "control"
    conditions: list[ConditionSpec] = field(default_factory=list)
    variables: dict[str, list[Any]] = field(default_factory=dict)
    transform_seed: int = 0

    def __post_init__(self) -> None:
        if self.prompts_file in ("None", "null", ""):  # command-line `null` can arrive as text
            self.prompts_file = None
        self.prompts = [p if isinstance(p, PromptSpec) else _as_prompt(p) for p in self.prompts]
        self.conditions = [c if isinstance(c, ConditionSpec) else ConditionSpec(**c) for c in self.conditions]

    # ----- resolution -------------------------------------------------------------

    def resolved_prompts(self) -> list[PromptSpec]:
        prompts = list(self.prompts)
        if self.prompts_file:
            prompts += load_prompts_file(self.prompts_file)
        if self.prompt_generator:
            prompts += generate_prompts(**self.prompt_generator)
        return prompts

    def resolved_conditions(self) -> list[ConditionSpec]:
        conditions = grid_conditions(self.variables) + list(self.conditions)
        if not any(c.name == self.control for c in conditions):
            conditions.insert(0, ConditionSpec(name=self.control))
        for condition in conditions:
            if not condition.variables:
                condition.variables = {**condition.encoding, **condition.sampler}
                if condition.surgery:
                    condition.variables["surgery"] = [s.get("variant") for s in condition.surgery]
                if condition.prompt_transform:
                    condition.variables["prompt_transform"] = condition.prompt_transform
        return conditions

    def baseline_encoding(self) -> EncodingOptions:
        return EncodingOptions().with_overrides(self.encoding)

    def baseline_sampler(self) -> SamplerSettings:
        return SamplerSettings().with_overrides(self.sampler)

    def validate(self) -> None:
        """Check everything that can be checked without a model; raise one-line errors
        that name the field, the value, the rule and a fix."""
        if self.kind not in STUDY_KINDS:
            raise ValueError(f"study.kind {self.kind!r} is unknown; choose one of {', '.join(STUDY_KINDS)}")
        check_name(self.name, "study.name")
        self._validate_seeds()
        prompts = self.resolved_prompts()
        if not prompts:
            raise ValueError("the study has no prompts (study.prompts is empty and there is no prompts_file or "
                             "prompt_generator); give at least one, e.g. prompts: [\"a red apple\"]")
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt.text, str) or not prompt.text.strip():
                raise ValueError(f"prompt {index} is empty ({prompt.text!r}); give it some text or remove it")
        conditions = self.resolved_conditions()
        names = [c.name for c in conditions]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"study.conditions: names repeat ({', '.join(map(repr, duplicates))}); "
                             "give each condition its own name")
        for condition in conditions:
            self._validate_condition(condition)

    def _validate_seeds(self) -> None:
        if not self.seeds:
            raise ValueError("study.seeds is empty; give at least one, e.g. seeds: [42]")
        for seed in self.seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
                raise ValueError(f"study.seeds: seed {seed!r} is out of range; seeds are integers in 0..2**64-1 "
                                 f"(0..{MAX_SEED})")
        repeated = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if repeated:
            raise ValueError(f"study.seeds repeat {repeated} in {self.seeds}; list each seed once")

    def _validate_condition(self, condition: ConditionSpec) -> None:
        check_name(condition.name, "condition name")
        where = f"condition {condition.name!r}"
        try:
            self.baseline_encoding().with_overrides(condition.encoding)
            self.baseline_sampler().with_overrides(condition.sampler)
            if condition.surgery:
                surgery.validate_specs(surgery.parse_specs(condition.surgery))
            if condition.prompt_transform:
                get_prompt_transform(condition.prompt_transform)
        except (ValueError, TypeError, KeyError, FileNotFoundError) as error:
            raise ValueError(f"{where}: {error}") from None

    def items(self, max_prompts: int | None = None, max_seeds: int | None = None) -> list[StudyItem]:
        """All items, condition-major, with stable ids.

        `max_prompts` / `max_seeds` keep only the first prompts / seeds (smoke runs);
        every condition stays, and ids are unchanged, so a smoke run's images are
        reused when the full study runs in the same folder.
        """
        self.validate()
        prompts = self.resolved_prompts()[:max_prompts]
        seeds = self.seeds[:max_seeds]
        items = []
        for condition_index, condition in enumerate(self.resolved_conditions()):
            encoding = self.baseline_encoding().with_overrides(condition.encoding)
            sampler = self.baseline_sampler().with_overrides(condition.sampler)
            transform = None
            if condition.prompt_transform:
                transform = get_prompt_transform(condition.prompt_transform)
            for prompt_index, prompt in enumerate(prompts):
                text = prompt.text
                if transform is not None:
                    text = transform(text, seed=self.transform_seed + prompt_index)
                for seed in seeds:
                    items.append(
                        StudyItem(
                            item_id=f"{condition.name}/p{prompt_index:03d}_s{seed}",
                            study=self.name,
                            condition=condition.name,
                            condition_index=condition_index,
                            prompt_index=prompt_index,
                            prompt=text,
                            original_prompt=prompt.text,
                            prompt_type=prompt.type,
                            seed=int(seed),
                            encoding=encoding,
                            sampler=sampler,
                            surgery=tuple(condition.surgery),
                            prompt_transform=condition.prompt_transform or None,
                            variables=dict(condition.variables),
                            metadata=dict(prompt.metadata),
                        )
                    )
        return items

    def to_record(self) -> dict[str, Any]:
        """The resolved study as JSON-able data (study.json in the run folder)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "control": self.control,
            "seeds": list(self.seeds),
            "prompts": [asdict(p) for p in self.resolved_prompts()],
            "encoding": self.baseline_encoding().to_dict(),
            "sampler": self.baseline_sampler().to_dict(),
            "conditions": [asdict(c) for c in self.resolved_conditions()],
        }


def grid_conditions(variables: dict[str, list[Any]]) -> list[ConditionSpec]:
    """One condition per point of the grid spanned by `variables`."""
    if not variables:
        return []
    keys = list(variables)
    for key in keys:
        group, _, name = key.partition(".")
        if group not in VARIABLE_GROUPS or not name:
            raise ValueError(f"study.variables key {key!r} must look like 'sampler.<option>' or "
                             "'encoding.<option>', e.g. sampler.shift")
        if not isinstance(variables[key], list) or not variables[key]:
            raise ValueError(f"study.variables[{key!r}] is {variables[key]!r}; give a non-empty list of values, "
                             "e.g. [2.0, 3.0]")
    conditions = []
    for values in itertools.product(*(variables[k] for k in keys)):
        overrides: dict[str, dict[str, Any]] = {"encoding": {}, "sampler": {}}
        short = {}
        for key, value in zip(keys, values):
            group, _, name = key.partition(".")
            overrides[group][name] = value
            short[name] = value
        label = ",".join(f"{name}={_format_value(value)}" for name, value in short.items())
        conditions.append(ConditionSpec(name=label, variables=short, **overrides))
    return conditions


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    return str(value)


def slug(text: str) -> str:
    """`text` with every character a name may not hold replaced by '_'."""
    return re.sub(f"[^{NAME_CHARACTERS}]", "_", text)


def check_name(name: Any, what: str) -> None:
    """Study and condition names become folder and file names: one rule keeps them inside the run folder.

    Letters, digits and `-_.=,+` only (so no '/' or '\\'), not empty, no leading dot (so no
    '.', '..' or hidden folders).
    """
    if not isinstance(name, str) or not name or name.startswith(".") or slug(name) != name:
        suggestion = slug(str(name or "")).lstrip(".") or "a_name"
        raise ValueError(
            f"{what} {name!r} is not allowed: names become folder names, so they may use only letters, digits "
            f"and '-_.=,+', must not be empty and must not start with '.'; e.g. {suggestion!r}"
        )


def _as_prompt(value: Any) -> PromptSpec:
    if isinstance(value, str):
        return PromptSpec(text=value)
    if isinstance(value, dict):
        return PromptSpec(**value)
    raise ValueError(f"a prompt must be a string or {{text, type, metadata}}, got {value!r}")


def load_prompts_file(path: str | Path) -> list[PromptSpec]:
    """Read prompts: .txt (one per line; '#' comments; optional 'type | prompt') or a .json/.yaml list."""
    path = _find_prompts_file(path)
    if path.suffix in (".json", ".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(path.read_text()) if path.suffix != ".json" else json.loads(path.read_text())
        if not isinstance(data, list):
            raise ValueError(f"prompts_file {str(path)!r} holds a {type(data).__name__}; it must hold a list of "
                             "prompts (strings or {text, type})")
        return [_as_prompt(entry) for entry in data]
    prompts = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kind, sep, text = line.partition(" | ")
        prompts.append(PromptSpec(text=text.strip(), type=kind.strip()) if sep else PromptSpec(text=line))
    return prompts


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _find_prompts_file(path: str | Path) -> Path:
    """A relative path is tried from the working directory, then from the project root,
    so the shipped configs (prompts_file: configs/prompts/...) run from any directory."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_absolute() and (PROJECT_ROOT / path).is_file():
        return PROJECT_ROOT / path
    raise FileNotFoundError(
        f"prompts_file {str(path)!r} does not exist (relative paths are tried from the working directory and "
        f"{PROJECT_ROOT}); check the path, or give prompts inline with study.prompts"
    )
