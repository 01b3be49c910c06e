"""Training knobs for refiner style adapters, as validated dataclasses.

The config IS the documentation: these classes are the types of
`ZImageModule(fit={adapter: ..., objective: ...})` (llm_dit.module_settings.FitSettings), so `--help` lists every field and a
typo fails at config time, before any model loads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

AdapterVariant = Literal["lora", "full", "extra_blocks"]
ADAPTER_VARIANTS: tuple[str, ...] = ("lora", "full", "extra_blocks")
SigmaSampling = Literal["uniform", "logit_normal"]
SIGMA_SAMPLINGS: tuple[str, ...] = ("uniform", "logit_normal")
# Every nn.Linear of a Z-Image block (attention q/k/v/out, SwiGLU w1/w2/w3).
REFINER_LINEARS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3")


@dataclass
class AdapterConfig:
    """What is trained on the context refiner, and how fast.

    Attributes:
        variant: "lora" (low-rank deltas on the refiner's linear layers, via peft),
            "full" (every refiner weight trains), or "extra_blocks" (new blocks
            appended after the refiner, initialized to exactly the identity).
        rank: LoRA rank (lora only).
        alpha: LoRA alpha; the delta is scaled by alpha / rank. None means alpha = rank.
        target_modules: which linear layers of each block get LoRA, by name suffix.
        extra_blocks: how many identity-initialized blocks to append (extra_blocks only).
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warmup over this many optimizer steps.
    """

    variant: AdapterVariant = "lora"
    rank: int = 16
    alpha: float | None = None
    target_modules: list[str] | None = None
    extra_blocks: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.variant not in ADAPTER_VARIANTS:
            raise ValueError(f"unknown adapter variant {self.variant!r}; choose one of {', '.join(ADAPTER_VARIANTS)}")
        _check_positive_int("adapter.rank", self.rank)
        _check_positive_int("adapter.extra_blocks", self.extra_blocks)
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"adapter.alpha must be > 0 (or null for alpha = rank), got {self.alpha}")
        if self.learning_rate <= 0:
            raise ValueError(f"adapter.learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("adapter.weight_decay and adapter.warmup_steps must be >= 0")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("adapter.target_modules is empty; leave it null for every linear layer of the refiner")

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)

    @property
    def lora_targets(self) -> list[str]:
        return list(self.target_modules or REFINER_LINEARS)

    @classmethod
    def coerce(cls, value: AdapterConfig | dict[str, Any] | None) -> AdapterConfig | None:
        """Accept the dataclass (from the CLI) or a plain dict (from Python); unknown keys are errors."""
        return _coerce(cls, value, "adapter")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FlowMatchObjective:
    """How training draws noise levels (Z-Image's rectified-flow convention).

    sigma is drawn as s ~ U(0, 1) ("uniform") or s = sigmoid(N(logit_mean,
    logit_std)) ("logit_normal", SD3's choice: more weight on mid noise), then
    shifted like the sampler's schedule: sigma = shift*s / (1 + (shift-1)*s), so
    training sees noise levels where Turbo's 8 steps spend their time.

    Attributes:
        sigma_sampling: "uniform" or "logit_normal".
        shift: schedule shift (Turbo samples with 3.0); 1.0 leaves s unshifted.
        logit_mean, logit_std: parameters of the logit-normal draw.
        fixed_noise_seed: null for real training. An int pairs every example with one fixed
            (noise, sigma), drawn from this seed and the example's index: the objective then
            only memorizes, which is the classic "can it overfit a batch" check that the
            whole training path learns (the tests use it: on the random-weight tiny model
            almost nothing about fresh noise is learnable through the refiner).
    """

    sigma_sampling: SigmaSampling = "logit_normal"
    shift: float = 3.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    fixed_noise_seed: int | None = None

    def __post_init__(self) -> None:
        if self.sigma_sampling not in SIGMA_SAMPLINGS:
            raise ValueError(f"unknown sigma_sampling {self.sigma_sampling!r}; choose one of {', '.join(SIGMA_SAMPLINGS)}")
        if self.shift <= 0:
            raise ValueError(f"objective.shift must be > 0, got {self.shift}")
        if self.logit_std <= 0:
            raise ValueError(f"objective.logit_std must be > 0, got {self.logit_std}")

    @classmethod
    def coerce(cls, value: FlowMatchObjective | dict[str, Any] | None) -> FlowMatchObjective:
        return _coerce(cls, value, "objective") or cls()


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _coerce(cls: type, value: Any, what: str) -> Any:
    if value is None or isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a mapping of {cls.__name__} fields, got {value!r}")
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - valid)
    if unknown:
        raise ValueError(f"unknown {what} option(s) {unknown}; valid: {sorted(valid)}")
    return cls(**value)
