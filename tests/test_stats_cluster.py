"""The cluster bootstrap (prompts, then seeds within each drawn prompt) against simulated studies.

Oracle: data drawn from a known two-level model, value = mu + prompt effect +
seed noise, with per-prompt effects dominating. Over many simulated studies a
95% interval must contain the true mu about 95% of the time. The flat bootstrap
(every image its own unit) must not: it behaves as n = prompts x seeds.
Seeded and vectorised: the whole file runs in a few seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

from llm_dit.results.stats import (
    bootstrap_mean,
    cluster_bootstrap_mean,
    cluster_of,
    paired_difference,
    unpaired_difference,
)

PROMPTS, SEEDS, STUDIES, N_BOOT = 50, 5, 300, 400  # the shipped studies: 50 prompts x 5 seeds
PROMPT_SD, SEED_SD = 1.0, 0.3


def study(rng: np.random.Generator, mu: float) -> dict[tuple[int, int], float]:
    prompt_effect = rng.normal(0.0, PROMPT_SD, PROMPTS)
    noise = rng.normal(0.0, SEED_SD, (PROMPTS, SEEDS))
    return {(p, s): mu + prompt_effect[p] + noise[p, s] for p in range(PROMPTS) for s in range(SEEDS)}


def coverage(estimates: list, truth: float) -> float:
    return float(np.mean([e.low <= truth <= e.high for e in estimates]))


def test_cluster_interval_covers_the_true_mean_and_the_flat_one_does_not():
    rng = np.random.default_rng(2026)
    nested, flat = [], []
    for index in range(STUDIES):
        cells = study(rng, mu=3.0)
        nested.append(cluster_bootstrap_mean(cells, N_BOOT, seed=index))
        flat.append(bootstrap_mean(list(cells.values()), N_BOOT, seed=index))
    assert 0.89 <= coverage(nested, 3.0) <= 0.99  # 300 studies: one standard error is 1.3 points
    assert coverage(flat, 3.0) < 0.80  # too narrow: about sqrt(seeds) times
    assert all(e.n == PROMPTS * SEEDS and e.clusters == PROMPTS for e in nested)


def test_paired_cluster_difference_keeps_the_pairing_and_covers_the_true_effect():
    """Prompts differ a lot (shared by both conditions: pairing removes it), and the effect
    itself varies by prompt (only resampling prompts captures that)."""
    rng = np.random.default_rng(7)
    delta, effect_sd = 0.4, 0.5
    nested, flat = [], []
    for index in range(STUDIES):
        control = study(rng, mu=10.0)
        per_prompt = rng.normal(delta, effect_sd, PROMPTS)
        treatment = {k: v + per_prompt[k[0]] + rng.normal(0.0, 0.1) for k, v in control.items()}
        nested.append(paired_difference(treatment, control, N_BOOT, seed=index))
        flat.append(bootstrap_mean([treatment[k] - control[k] for k in control], N_BOOT, seed=index))
    assert 0.89 <= coverage(nested, delta) <= 0.99
    assert coverage(flat, delta) < 0.80
    # the pairing removes the prompt effect shared by both sides: far narrower than unpaired
    width = np.mean([e.high - e.low for e in nested])
    unpaired = unpaired_difference(treatment, control, N_BOOT)
    assert unpaired.high - unpaired.low > 2 * width


def test_one_draw_by_hand():
    """Independent check of the resampling scheme on a tiny case: with one seed per prompt the
    cluster bootstrap is the plain bootstrap over prompt means; with identical seeds within a
    prompt the seeds add nothing, so the interval equals the one of the prompt means."""
    per_prompt = {0: 1.0, 1: 2.0, 2: 4.0, 3: 8.0}
    cells = {(p, s): v for p, v in per_prompt.items() for s in range(3)}
    nested = cluster_bootstrap_mean(cells, 4000, seed=1)
    over_prompts = cluster_bootstrap_mean(per_prompt, 4000, seed=1)
    assert nested.mean == pytest.approx(3.75) and nested.clusters == 4 and nested.n == 12
    assert over_prompts.clusters == 4 and over_prompts.n == 4
    # same resampled prompt draws (first draws of the same generator) -> same interval
    assert (nested.low, nested.high) == pytest.approx((over_prompts.low, over_prompts.high))
    assert cluster_of((3, 42)) == 3 and cluster_of("p") == "p"


def test_seeded_unbalanced_and_degenerate_cases():
    cells = {(0, 1): 1.0, (0, 2): 3.0, (1, 1): 10.0, (2, 1): None, (2, 2): float("nan")}
    a, b = cluster_bootstrap_mean(cells, 500, seed=3), cluster_bootstrap_mean(cells, 500, seed=3)
    assert a == b and a.n == 3 and a.clusters == 2 and a.mean == pytest.approx(14 / 3)
    assert a.low >= 1.0 and a.high <= 10.0
    one_prompt = cluster_bootstrap_mean({(0, s): float(s) for s in range(5)}, 500)
    assert one_prompt.clusters == 1 and not one_prompt.excludes_zero  # one prompt: never a finding
    assert cluster_bootstrap_mean({}).n == 0 and cluster_bootstrap_mean({(0, 0): 2.0}).format() == "2 (n=1)"
