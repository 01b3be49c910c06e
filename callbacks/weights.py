"""Metric weights the user set explicitly either load or stop the run.

A metric whose weights are not set is skipped with one warning (nothing can be
downloaded here, and the study is still useful without it). Weights that ARE set
but cannot be loaded are a mistake in the config: swallowing it costs a whole
study its headline number. So the metric callbacks load such weights when they
are built (before the trainer loads the generator or makes any image) and raise
`MetricWeightsError`, a ValueError, which the CLI prints as one line.
"""

from __future__ import annotations

MAX_CAUSE = 300  # characters of the underlying error kept in the one-line message


class MetricWeightsError(ValueError):
    """Explicitly set metric weights could not be loaded (file, cause and what to do in one line)."""


def weights_error(metric: str, setting: str, path: str, cause: BaseException | str, fix: str) -> MetricWeightsError:
    """The one-line error for `setting=path` of `metric` that failed with `cause`."""
    text = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
    text = " ".join(str(text).split())  # loaders' messages span lines (torch.load's do)
    if len(text) > MAX_CAUSE:
        text = text[: MAX_CAUSE - 3] + "..."
    return MetricWeightsError(f"{metric}: {setting}={path!r} could not be loaded ({text}); {fix}")
