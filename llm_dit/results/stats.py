"""Seeded bootstrap statistics for the report.

The unit of a study is the prompt: every prompt is generated once per seed, so
the images of one prompt are not independent (a prompt that is hard for one
seed is hard for the others). Treating the prompts x seeds images as
independent makes intervals too narrow (n = prompts x seeds where the
effective n is nearer the number of prompts). So every interval here is a
**cluster bootstrap over prompts, seeds nested**: each resample draws prompts
with replacement, then seeds with replacement within each drawn prompt, and
takes the mean of what it drew.

Values are keyed mappings: ``(prompt, seed) -> value`` (a key's first element
is its cluster), or ``prompt -> value`` for per-prompt statistics (then the
cluster bootstrap is a plain bootstrap over prompts). A paired difference
subtracts the two conditions per key *before* resampling, so the pairing by
(prompt, seed) is kept in every resample.

Percentile intervals, 95% by default, from ``n_boot`` resamples of a
``numpy.random.default_rng(seed)``: the same data and seed always give the
same interval. ``bootstrap_mean`` (every value its own unit) stays for values
without prompt structure and as the naive reference in the tests. Preference
votes use a Wilson interval (fine at small n and at 0% or 100%).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Hashable

import numpy as np

DEFAULT_BOOT = 2000
DEFAULT_SEED = 0
UNIT = "95 % cluster bootstrap over prompts, seeds nested"
_MAX_DRAWS = 4_000_000  # values drawn per chunk of resamples: bounds memory for big studies


@dataclass(frozen=True)
class Estimate:
    """A mean (or mean difference) with its interval, the number of values and of prompts.

    Attributes:
        clusters: prompts behind the values (None: every value its own unit).
    """

    mean: float
    low: float
    high: float
    n: int
    clusters: int | None = None

    @property
    def units(self) -> int:
        """Independent units: prompts when clustered, else values."""
        return self.n if self.clusters is None else self.clusters

    @property
    def excludes_zero(self) -> bool:
        """The interval is clear of 0 (never with a single independent unit)."""
        return self.units > 1 and (self.low > 0 or self.high < 0)

    def format(self, digits: int = 3, signed: bool = False) -> str:
        if self.n == 0 or not math.isfinite(self.mean):
            return "n/a"
        mean = number(self.mean, digits, signed)
        if self.n == 1:
            return mean + " (n=1)"
        return f"{mean} [{number(self.low, digits)}, {number(self.high, digits)}]"

    def count(self) -> str:
        """How many values and prompts, e.g. ``12 images, 4 prompts`` (or ``12 values`` when flat)."""
        if self.clusters is None:
            return f"{self.n} values"
        return f"{self.n} images, {self.clusters} prompt{'s' if self.clusters != 1 else ''}"


def number(value: float, digits: int = 3, signed: bool = False) -> str:
    """``digits`` significant digits, but never scientific notation for values up to 1e6."""
    sign = "+" if signed else ""
    if 10**digits <= abs(value) < 1e6:
        return f"{value:{sign}.0f}"
    return f"{value:{sign}.{digits}g}"


EMPTY = Estimate(math.nan, math.nan, math.nan, 0)


def cluster_of(key: Hashable) -> Hashable:
    """The prompt of a key: ``(prompt, seed)`` -> prompt; a bare key is its own cluster."""
    return key[0] if isinstance(key, tuple) and key else key


def cluster_bootstrap_mean(
    values: Mapping[Hashable, float | None],
    n_boot: int = DEFAULT_BOOT,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> Estimate:
    """Mean of the finite values with a cluster-bootstrap interval (prompts, then seeds within each)."""
    groups = _groups(values)
    if not groups:
        return EMPTY
    flat = np.concatenate(groups)
    mean, n = float(flat.mean()), int(flat.size)
    if n == 1:
        return Estimate(mean, mean, mean, 1, 1)
    means = _nested_means(groups, n_boot, np.random.default_rng(seed))
    low, high = _percentiles(means, level)
    return Estimate(mean, low, high, n, len(groups))


def paired_difference(
    treatment: Mapping[Hashable, float | None],
    control: Mapping[Hashable, float | None],
    n_boot: int = DEFAULT_BOOT,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> Estimate:
    """Mean of ``treatment[k] - control[k]`` over keys finite in both, cluster-bootstrapped.

    The difference is taken per key (per (prompt, seed)) before resampling, so a
    resampled prompt brings its paired differences, never one side alone.
    """
    diffs = {
        k: treatment[k] - control[k] for k in treatment if k in control and _finite(treatment[k]) and _finite(control[k])
    }
    return cluster_bootstrap_mean(diffs, n_boot, seed, level)


def unpaired_difference(
    a: Mapping[Hashable, float | None],
    b: Mapping[Hashable, float | None],
    n_boot: int = DEFAULT_BOOT,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> Estimate:
    """mean(a) - mean(b) for samples of different prompts: each side cluster-bootstrapped on its own."""
    ga, gb = _groups(a), _groups(b)
    na, nb = sum(g.size for g in ga), sum(g.size for g in gb)
    if na < 2 or nb < 2:
        return EMPTY
    rng = np.random.default_rng(seed)
    da, db = _nested_means(ga, n_boot, rng), _nested_means(gb, n_boot, rng)
    low, high = _percentiles(da - db, level)
    mean = float(np.concatenate(ga).mean() - np.concatenate(gb).mean())
    return Estimate(mean, low, high, int(min(na, nb)), int(min(len(ga), len(gb))))


def bootstrap_mean(
    values: Sequence[float | None], n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED, level: float = 0.95
) -> Estimate:
    """Mean with a flat percentile bootstrap: every value its own independent unit.

    Right only for values without prompt structure; study values go through
    ``cluster_bootstrap_mean``.
    """
    data = np.asarray([v for v in values if _finite(v)], dtype=float)
    if data.size == 0:
        return EMPTY
    mean = float(data.mean())
    if data.size == 1:
        return Estimate(mean, mean, mean, 1)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_boot, data.size))].mean(axis=1)
    low, high = _percentiles(means, level)
    return Estimate(mean, low, high, int(data.size))


def wilson_interval(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a proportion (ties may count as half a success)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


# ----- internals ---------------------------------------------------------------------------


def _groups(values: Mapping[Hashable, float | None]) -> list[np.ndarray]:
    """Finite values grouped by cluster, clusters in first-seen order."""
    grouped: dict[Hashable, list[float]] = {}
    for key, value in values.items():
        if _finite(value):
            grouped.setdefault(cluster_of(key), []).append(float(value))
    return [np.asarray(v, dtype=float) for v in grouped.values()]


def _nested_means(groups: list[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` resample means: draw clusters with replacement, then members within each drawn cluster."""
    sizes = np.array([g.size for g in groups])
    width = int(sizes.max())
    table = np.zeros((len(groups), width))
    for row, group in enumerate(groups):
        table[row, : group.size] = group
    chunk = max(1, _MAX_DRAWS // (len(groups) * width))
    out = []
    for start in range(0, n_boot, chunk):
        count = min(chunk, n_boot - start)
        drawn = rng.integers(0, len(groups), size=(count, len(groups)))  # prompts
        n = sizes[drawn]
        picks = (rng.random((count, len(groups), width)) * n[..., None]).astype(np.int64)  # seeds within each
        used = np.arange(width) < n[..., None]  # a drawn prompt contributes as many draws as it has seeds
        sums = np.where(used, table[drawn[..., None], picks], 0.0).sum(axis=(1, 2))
        out.append(sums / n.sum(axis=1))
    return np.concatenate(out)


def _percentiles(means: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
