"""Seeded bootstrap statistics for the report.

The unit of resampling is one generated image, i.e. one (prompt, seed) cell of
a condition; a paired difference pairs the same (prompt_index, seed) under two
conditions, which removes most prompt-to-prompt variance. Percentile
intervals, 95% by default, from ``n_boot`` resamples of a
``numpy.random.default_rng(seed)``: the same data and seed always give the
same interval. Preference votes use a Wilson interval (fine at small n and at
0% or 100%).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Hashable

import numpy as np

DEFAULT_BOOT = 2000
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A mean (or mean difference) with its 95% interval and sample size."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)

    def format(self, digits: int = 3, signed: bool = False) -> str:
        if self.n == 0 or not math.isfinite(self.mean):
            return "n/a"
        mean = number(self.mean, digits, signed)
        if self.n == 1:
            return mean + " (n=1)"
        return f"{mean} [{number(self.low, digits)}, {number(self.high, digits)}]"


def number(value: float, digits: int = 3, signed: bool = False) -> str:
    """``digits`` significant digits, but never scientific notation for values up to 1e6."""
    sign = "+" if signed else ""
    if 10**digits <= abs(value) < 1e6:
        return f"{value:{sign}.0f}"
    return f"{value:{sign}.{digits}g}"


EMPTY = Estimate(math.nan, math.nan, math.nan, 0)


def bootstrap_mean(
    values: Sequence[float], n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED, level: float = 0.95
) -> Estimate:
    """Mean of ``values`` (NaN dropped) with a percentile bootstrap interval."""
    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if data.size == 0:
        return EMPTY
    mean = float(data.mean())
    if data.size == 1:
        return Estimate(mean, mean, mean, 1)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_boot, data.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Estimate(mean, float(low), float(high), int(data.size))


def paired_difference(
    treatment: Mapping[Hashable, float],
    control: Mapping[Hashable, float],
    n_boot: int = DEFAULT_BOOT,
    seed: int = DEFAULT_SEED,
) -> Estimate:
    """Mean of treatment[k] - control[k] over keys present (and finite) in both, bootstrapped."""
    diffs = [
        treatment[k] - control[k] for k in treatment if k in control and _finite(treatment[k]) and _finite(control[k])
    ]
    return bootstrap_mean(diffs, n_boot, seed)


def unpaired_difference(
    a: Sequence[float], b: Sequence[float], n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED, level: float = 0.95
) -> Estimate:
    """mean(a) - mean(b) for independent samples (different prompts), bootstrapped per sample."""
    xa = np.asarray([v for v in a if _finite(v)], dtype=float)
    xb = np.asarray([v for v in b if _finite(v)], dtype=float)
    if xa.size < 2 or xb.size < 2:
        return EMPTY
    rng = np.random.default_rng(seed)
    da = xa[rng.integers(0, xa.size, size=(n_boot, xa.size))].mean(axis=1)
    db = xb[rng.integers(0, xb.size, size=(n_boot, xb.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(da - db, [tail, 100 - tail])
    return Estimate(float(xa.mean() - xb.mean()), float(low), float(high), int(min(xa.size, xb.size)))


def wilson_interval(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a proportion (ties may count as half a success)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
