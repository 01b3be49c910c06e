"""The machinery of the sub-question sections: answers, condition lookup, comparisons.

Each study kind has its sub-questions (Q1.1 .. Q7.5 of the seed doc) in a
module of this package; each is a function ``Context -> Answer`` that states
the numbers the run has and says when a question needs a human A/B study (or
data this run lacks) rather than pretending a proxy metric settles it.

Conditions are chosen by their recorded settings (``llm_dit.results.settings``),
never by their names: ``ctx.select(lambda s: s.refiner_skipped)`` finds the
conditions that bypass the context refiner, and ``ctx.reference`` the condition
to compare one against, i.e. the control when it differs only in the settings
the question is about, else another condition that does. Every comparison an
answer makes is recorded in ``Answer.comparisons`` (tests check them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from llm_dit.results.run_data import TIMING_METRICS, RunData, direction
from llm_dit.results.settings import ConditionSettings
from llm_dit.results.stats import Estimate, cluster_bootstrap_mean, paired_difference
from llm_dit.results.tables import quality_metric

Predicate = Callable[[ConditionSettings], bool]


@dataclass(frozen=True)
class Comparison:
    """One paired comparison an answer reports: ``condition − against`` on ``metric``."""

    condition: str
    against: str
    metric: str
    estimate: Estimate


@dataclass
class Answer:
    """One sub-question's section of the report."""

    qid: str
    question: str
    lines: list[str] = field(default_factory=list)
    needs_human: str | None = None  # why a human A/B study is needed, when it is
    answerable: bool = True  # False: this run lacks the conditions/data
    comparisons: list[Comparison] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)  # conditions listed side by side (no pairing)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(condition, against) of every comparison, in order, without repeats."""
        return list(dict.fromkeys((c.condition, c.against) for c in self.comparisons))

    def markdown(self) -> str:
        head = f"### {self.qid}: {self.question}\n"
        body = "\n".join(f"- {line}" for line in self.lines) if self.lines else "- (no data)"
        human = f"\n- **Needs a human A/B study:** {self.needs_human}" if self.needs_human else ""
        return head + body + human + "\n"


@dataclass
class Context:
    """What a question function needs: the run, statistics settings and preference votes."""

    run: RunData
    n_boot: int = 2000
    seed: int = 0
    votes: dict[str, Any] = field(default_factory=dict)  # condition -> WinRate
    image_change: bool = True
    max_image_pairs: int = 100
    _pixel_cache: dict[tuple[str, str], Estimate] = field(default_factory=dict, repr=False)

    @cached_property
    def metrics(self) -> list[str]:
        return self.run.item_metrics()

    @cached_property
    def quality(self) -> str | None:
        return quality_metric(self.run)

    def metric(self, base: str) -> str | None:
        """The run's name for a metric, random-init labelled or not."""
        return next((m for m in (base, base + "_random_init") if m in self.metrics), None)

    def main_metrics(self) -> list[str]:
        """Metrics worth a line in most answers: the world's scene scores, CLIP scores and detail score."""
        wanted = ("world_all", "world_facts", "clip_score", "clip_elements_mean", "detail_score")
        return [m for m in (self.metric(w) for w in wanted) if m]

    # -- conditions ---------------------------------------------------------------
    def settings(self, condition: str) -> ConditionSettings:
        return self.run.settings(condition)

    def select(self, predicate: Predicate) -> list[str]:
        """Conditions whose recorded settings satisfy ``predicate``, in study order."""
        return [c for c in self.run.conditions if predicate(self.settings(c))]

    def reference(self, condition: str, varies: Iterable[str], predicate: Predicate) -> str | None:
        """The condition to compare ``condition`` against.

        It satisfies ``predicate`` and differs from ``condition`` only in the flat
        settings keys ``varies`` (prefixes allowed: "encoding.", "surgery"): the
        control when it qualifies, else the first condition that does.
        """
        prefixes = tuple(varies)
        mine = self.settings(condition)

        def qualifies(other: str) -> bool:
            theirs = self.settings(other)
            return (
                other != condition
                and predicate(theirs)
                and all(key.startswith(prefixes) for key in mine.differences(theirs))
            )

        control = self.run.control
        if control is not None and qualifies(control):
            return control
        return next((c for c in self.run.conditions if qualifies(c)), None)

    # -- comparisons --------------------------------------------------------------
    def difference(self, metric: str, condition: str, against: str, where: Callable | None = None) -> Estimate:
        return paired_difference(
            self.run.cells(metric, condition, where), self.run.cells(metric, against, where), self.n_boot, self.seed
        )

    def mean(self, metric: str, condition: str, where: Callable | None = None) -> Estimate:
        return cluster_bootstrap_mean(self.run.cells(metric, condition, where), self.n_boot, self.seed)

    def compare(
        self,
        answer: Answer,
        condition: str,
        against: str | None = None,
        metrics: Iterable[str] | None = None,
        where: Callable | None = None,
    ) -> list[str]:
        """Add to ``answer`` one line per metric: paired difference ``condition − against``, CI, verdict."""
        against = against or self.run.control
        if against is None or condition == against:
            return []
        differs = self.settings(condition).describe(self.settings(against), both=True)
        lines = [f"{condition} vs {against}: {differs or 'the same recorded settings'}"]
        for metric in metrics if metrics is not None else self.main_metrics():
            est = self.difference(metric, condition, against, where)
            if est.n:
                answer.comparisons.append(Comparison(condition, against, metric, est))
                lines.append(
                    f"`{metric}`: {condition} − {against} = {est.format(signed=True)} ({est.count()}, paired) → "
                    + verdict(est, metric)
                )
        if self.image_change:
            change = self.pixel_change(condition, against)
            if change.n:
                lines.append(
                    f"mean absolute pixel difference {condition} vs {against}: {change.format()} (0..1 scale, "
                    f"{change.count()}; 0 = identical images)"
                )
        if against == self.run.control:
            lines += self.embedding_lines(condition)
        vote = self.votes.get(condition)
        if vote is not None and vote.control == against:
            lines.append(f"human preference: {vote.describe()}")
        answer.lines += lines
        return lines

    def embedding_lines(self, condition: str) -> list[str]:
        """What embedding_analysis.json says about ``condition`` vs the control (empty without it)."""
        analysis, control = self.run.analysis, self.run.control
        lines = []
        drift = (analysis.get("drift_vs_control") or {}).get(condition) or {}
        if drift.get("cosine_mean_pooled") is not None:
            text = (
                f"caption embedding vs {control}: cosine {fmt(drift['cosine_mean_pooled'])} (mean-pooled), "
                f"semantic drift {fmt(drift.get('semantic_drift'))}"
            )
            if drift.get("cosine_user_tokens") is not None:
                text += f", token-wise cosine of the user tokens {fmt(drift['cosine_user_tokens'])}"
            lines.append(text)
        tokens = (analysis.get("token_counts") or {}).get(condition) or {}
        if tokens.get("mean_tokens") is not None:
            extra = tokens.get("extra_tokens_vs_control")
            lines.append(
                f"template tokens per prompt: {fmt(tokens['mean_tokens'])}"
                + (f" ({extra:+.1f} vs {control})" if extra is not None else "")
            )
        return lines

    def pixel_change(self, condition: str, against: str) -> Estimate:
        """How much the images themselves change: mean |a - b| of paired PNGs (256 px, RGB; cached)."""
        if (condition, against) not in self._pixel_cache:
            self._pixel_cache[(condition, against)] = self._pixel_change(condition, against)
        return self._pixel_cache[(condition, against)]

    def _pixel_change(self, condition: str, against: str) -> Estimate:
        run = self.run
        if run.run_dir is None or condition == against:
            return cluster_bootstrap_mean({})
        a = {(r["prompt_index"], r["seed"]): r.get("image") for r in run.rows_of(condition)}
        b = {(r["prompt_index"], r["seed"]): r.get("image") for r in run.rows_of(against)}
        keys = sorted(k for k in a if k in b and a[k] and b[k])[: self.max_image_pairs]
        values = {}
        for key in keys:
            pa, pb = run.run_dir / a[key], run.run_dir / b[key]
            if pa.is_file() and pb.is_file():
                values[key] = float(np.abs(_pixels(pa) - _pixels(pb)).mean())
        return cluster_bootstrap_mean(values, self.n_boot, self.seed)

    def missing(self, answer: Answer, wanted: str) -> Answer:
        """Mark ``answer`` unanswerable: no condition with the settings it needs (``wanted``, in words)."""
        answer.answerable = False
        answer.lines.append(f"this run has no condition {wanted}")
        return answer

    def table(self, answer: Answer, metric: str, conditions: list[str], where: Callable | None = None) -> list[str]:
        """Add lines "condition: mean [CI] (images, prompts)" for ``metric`` to ``answer``."""
        out = []
        for condition in conditions:
            est = self.mean(metric, condition, where)
            if est.n:
                out.append(f"`{metric}` {condition}: {est.format()} ({est.count()})")
                answer.shown.append(condition)
        answer.lines += out
        return out


def verdict(est: Estimate, metric: str) -> str:
    """Plain words for a difference: which way, and whether the CI excludes zero.

    Timing is machine-dependent: it gets a direction, never a finding.
    """
    if metric in TIMING_METRICS:
        return "machine-dependent timing: not a finding"
    if not est.excludes_zero:
        return "no clear difference (CI includes 0)"
    word = "higher" if est.mean > 0 else "lower"
    sense = direction(metric)
    if sense == 0:
        return word
    better = (est.mean > 0) == (sense > 0)
    return f"{word} ({'better' if better else 'worse'})"


def _pixels(path: Path, size: int = 256) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0


def fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


Question = Callable[[Context], Answer]


def probe_metrics(ctx: Context, *words: str) -> list[str]:
    return [m for m in ctx.metrics if m.startswith("clip_probe_") and any(w in m for w in words)]


def type_filter(*words: str) -> Callable[[dict], bool]:
    return lambda row: any(w in str(row.get("prompt_type") or "").lower() for w in words)


def type_is(prompt_type: str) -> Callable[[dict], bool]:
    return lambda row: str(row.get("prompt_type")) == prompt_type


def token_column(ctx: Context) -> str | None:
    return next(
        (m for m in ("num_tokens", "caption_tokens") if any(ctx.run.cells(m, c) for c in ctx.run.conditions[:1])), None
    )


def vs_reference(
    qid: str,
    question: str,
    wanted: str,
    predicate: Predicate,
    varies: tuple[str, ...],
    reference: Predicate,
    human: str | None = None,
) -> Question:
    """A question answered by comparing each condition with ``predicate`` to its reference.

    ``wanted`` says in words what ``predicate`` looks for (shown when nothing matches);
    ``varies`` and ``reference`` pick the comparison condition (see ``Context.reference``).
    """

    def answer(ctx: Context) -> Answer:
        a = Answer(qid, question, needs_human=human)
        found = ctx.select(predicate)
        if not found:
            return ctx.missing(a, wanted)
        for cond in found:
            against = ctx.reference(cond, varies, reference)
            if against is None:
                a.lines.append(f"{cond}: no condition that differs from it only in {', '.join(varies)} to compare with")
                continue
            ctx.compare(a, cond, against)
        if not a.comparisons and not a.lines:
            return ctx.missing(a, wanted)
        return a

    return answer
