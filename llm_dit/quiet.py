"""Silence third-party messages that tell a llm-dit user nothing they can act on.

Every command used to open with about a dozen lines from Lightning, diffusers
and torch (advertising tips, a TPU census, a global seed the study never uses,
a float32-casting note about an empty module list, deprecations inside
Lightning itself), and the one line that matters (e.g. "CLIP score skipped")
was lost among them. ``install()`` drops exactly those messages, matched by
their text, and leaves everything else alone: our own warnings, Lightning's
"GPU available" line and any third-party warning not listed here still show.
Set ``LLM_DIT_VERBOSE=1`` to see everything again.

Each entry says where the message comes from (found by running
``python -m llm_dit.cli predict --config configs/refiner_skip.yaml`` on the tiny model).
"""

from __future__ import annotations

import logging
import os
import re
import warnings

#: (logger name, message regex) for log records that are dropped.
LOG_MESSAGES: tuple[tuple[str, str], ...] = (
    # lightning/pytorch/trainer/connectors/{logger,callback}_connector.py: product adverts
    ("lightning.pytorch.utilities.rank_zero", r"💡 Tip: "),
    # lightning/pytorch/trainer/setup.py: accelerators this toolkit never uses
    ("lightning.pytorch.utilities.rank_zero", r"^(TPU|HPU|IPU) available: "),
    # lightning/fabric/utilities/seed.py: the global seed; study items carry their own seeds
    ("lightning.fabric.utilities.seed", r"^(\[rank: \d+\] )?Seed set to "),
    # diffusers/models/modeling_utils.py: printed with an empty module list for Z-Image and its VAE
    ("diffusers.models.modeling_utils", r"should be kept in float32: \[\]"),
)

#: message regexes for Python warnings that are dropped.
WARNING_MESSAGES: tuple[str, ...] = (
    # lightning/fabric/utilities/seed.py (the global seed, see above)
    r"No seed found, seed set to ",
    # lightning/pytorch/utilities/_pytree.py calls a torch API that torch deprecated
    r".*isinstance\(treespec, LeafSpec\)",
    # lightning's data connector: ZImageModule moves study items (plain dataclasses) on purpose
    r"You have overridden `transfer_batch_to_device` in `LightningModule` but have passed in a `LightningDataModule`",
    # lightning/pytorch/cli.py when args= and sys.argv agree (the CLI passes sys.argv through)
    r"LightningCLI's args parameter is intended to run from within Python",
)

_installed = False


class _DropMessages(logging.Filter):
    """Drops records whose formatted message matches one of ``patterns``."""

    def __init__(self, patterns: list[str]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


def install() -> None:
    """Install the filters (idempotent; a no-op with LLM_DIT_VERBOSE=1).

    Logger filters go on once per process; warning filters are re-applied on
    every call, since ``warnings.catch_warnings`` blocks (pytest wraps each test
    in one) restore the filter list on exit.
    """
    global _installed
    if os.environ.get("LLM_DIT_VERBOSE"):
        return
    for pattern in WARNING_MESSAGES:
        warnings.filterwarnings("ignore", message=pattern)  # an identical filter is replaced, not duplicated
    if _installed:
        return
    _installed = True
    by_logger: dict[str, list[str]] = {}
    for name, pattern in LOG_MESSAGES:
        by_logger.setdefault(name, []).append(pattern)
    for name, patterns in by_logger.items():
        logging.getLogger(name).addFilter(_DropMessages(patterns))
