"""ZImageModule's options, grouped by what they change: loading, speed, predict, fit.

Each group is a dataclass, so the command line shows it as a nested group
(`--model.speed.compile true`, `--model.predict.record_refiner_drift true`,
`--model.fit.adapter.rank 8`) and a typo fails at config time, before any model loads.
`weights` and `dtype` stay at the top: they name the model (`--model.weights /models/Z-Image-Turbo`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from llm_dit.models.placement import Placement
from llm_dit.training.config import AdapterConfig, FlowMatchObjective

ENCODER_PADDINGS = ("none", "diffusers")


@dataclass
class LoadSettings:
    """How the weights load.

    Attributes:
        tiny_seed: seed of the tiny presets' random weights.
        placement: dtype per component and VAE tiling (llm_dit.models.Placement). Under the
            CLI the trainer decides the device; per-component devices and offload apply when
            the components are used directly (`load_components(..., placement=...)`).
        text_encoder_override: another encoder of the same hidden size (folder or single file),
            e.g. Qwen3-Embedding-4B, swapped in for the next ablation.
        allow_pickle: accept pickle checkpoints (.bin/.pt/.ckpt); off because they can run code.
    """

    tiny_seed: int = 0
    placement: Placement | None = None
    text_encoder_override: str | None = None
    allow_pickle: bool = False


@dataclass
class SpeedSettings:
    """Speed options; the ones marked bit-identical never move a pixel.

    Attributes:
        compile: torch.compile; True compiles the DiT blocks (regional, shape-generic: no
            recompiles across prompts), the text encoder's layers and the VAE decoder; a list
            picks parts ("dit", "encoder", "vae"). Same images up to bf16 rounding (llm_dit.accel).
        attention_backend: the DiT's attention kernel: None (diffusers' default), "auto"
            (cuDNN on Hopper), or a diffusers backend name such as "_native_cudnn".
        fp8: opt-in float8 linears in the DiT (H100/H200; generation only); changes images slightly.
        cache_refiner: reuse the context refiner's output across steps (bit-identical).
        share_steps: predict only: conditions whose schedules start alike (shift and step
            sweeps all start at sigma = 1) compute those steps once per prompt and seed
            (llm_dit.sampling.step_cache; bit-identical images).
    """

    compile: bool | list[str] = False
    attention_backend: str | None = None
    fp8: bool = False
    cache_refiner: bool = True
    share_steps: bool = True


@dataclass
class PredictSettings:
    """What `predict` does besides generating.

    Attributes:
        encoder_padding: "none" encodes each prompt unpadded (no wasted work, and a
            prompt's features never depend on its batch-mates); "diffusers" pads the
            batch to max_length as ZImagePipeline does (bit-identical to it).
        record_refiner_drift: probe the context refiner and report per-layer token drift (mean
            cosine of each caption row before vs after the block, at the first step; pad rows excluded).
        free_encoder_after_encoding: encode every prompt of the study first, then free the text
            encoder (~8 GB for Qwen3-4B), before any image is generated.
        progress: show a per-step progress bar inside each batch.
    """

    encoder_padding: str = "none"
    record_refiner_drift: bool = False
    free_encoder_after_encoding: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        if self.encoder_padding not in ENCODER_PADDINGS:
            raise ValueError(f"predict.encoder_padding must be one of {', '.join(ENCODER_PADDINGS)}, "
                             f"got {self.encoder_padding!r}")


@dataclass
class FitSettings:
    """`fit`: the context-refiner style adapter (llm_dit/training).

    Attributes:
        adapter: what trains (variant lora | full | extra_blocks, rank, alpha, learning_rate, ...;
            see llm_dit.training.AdapterConfig).
        objective: flow-matching sigma sampling (see llm_dit.training.FlowMatchObjective).
        gradient_checkpointing: recompute block activations in backward (less memory).
        validation_prompts: prompts sampled at every validation, logged as a TensorBoard grid.
        validation_seeds: one grid column per seed.
        validation_sampler: SamplerSettings overrides for those samples (size defaults to the
            training resolution). How often: trainer.val_check_interval.
    """

    adapter: AdapterConfig | None = None
    objective: FlowMatchObjective | None = None
    gradient_checkpointing: bool = False
    validation_prompts: list[str] | None = None
    validation_seeds: list[int] | None = None
    validation_sampler: dict[str, Any] | None = None


def coerce(cls: type, value: Any, group: str) -> Any:
    """The group from the CLI (a dataclass) or Python (a dict of its fields, or None for defaults);
    an unknown key is named with the valid ones."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"model.{group} must be a mapping of {cls.__name__} fields, got {value!r}")
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(value) - set(valid))
    if unknown:
        raise ValueError(f"unknown model.{group} option(s) {unknown}; valid: {valid}")
    return cls(**value)


def plain(settings: Any) -> dict[str, Any]:
    """A group as plain data (for hparams.yaml and checkpoints loaded with weights_only)."""
    return asdict(settings)


GROUPS = ("load", "speed", "predict", "fit")


def flat_options(hparams: Any) -> dict[str, Any]:
    """Every option of a ZImageModule's hparams by its own name, groups flattened, with the values
    the flat constructor of earlier versions stored (a Placement object, not its dict): resume
    fingerprints of run folders written then still match."""
    flat = {name: value for name, value in dict(hparams).items() if name not in GROUPS}
    for group in GROUPS:
        flat.update(dict(hparams.get(group) or {}))
    if isinstance(flat.get("placement"), dict):
        flat["placement"] = Placement(**flat["placement"])
    return flat


GROUP_CLASSES = {"load": LoadSettings, "speed": SpeedSettings, "predict": PredictSettings, "fit": FitSettings}
OPTION_PATHS = {f.name: f"{group}.{f.name}" for group, cls in GROUP_CLASSES.items() for f in fields(cls)}
"""A flat option's place on the command line (`tiny_seed` -> `load.tiny_seed`): resume
fingerprints keep the flat names, messages show where to set them."""


def group_options(**options: Any) -> dict[str, Any]:
    """Sort options given by their own names into ZImageModule's groups: migrates code written
    for the flat constructor of earlier versions, e.g.
    `ZImageModule(weights="tiny", **group_options(compile=True, record_refiner_drift=True))`."""
    owner = {f.name: group for group, cls in GROUP_CLASSES.items() for f in fields(cls)}
    grouped: dict[str, Any] = {}
    for name, value in options.items():
        if name in ("weights", "dtype"):
            grouped[name] = value
        elif name in owner:
            grouped.setdefault(owner[name], {})[name] = value
        else:
            raise ValueError(f"unknown ZImageModule option {name!r}; valid: weights, dtype, {', '.join(sorted(owner))}")
    return grouped
