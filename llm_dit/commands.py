"""The command line's names and help text: what `python -m llm_dit.cli --help` prints.

Kept apart from the code that runs the subcommands (llm_dit.cli dispatches, llm_dit.trainer_cli
runs the Lightning ones) and free of third-party imports, so listing the subcommands, or
rejecting a misspelt one, costs no torch or Lightning import.
"""

from __future__ import annotations

from typing import Any

PROG = "python -m llm_dit.cli"
SUBCOMMANDS = {
    "predict": "generate a study's images, metrics and results table: predict --config configs/<study>.yaml",
    "fit": "train a context-refiner style adapter: fit --config configs/refiner_style_adapter.yaml",
    "validate": "one validation pass of a fit config (loss and sample grid), no training",
    "test": "one test pass of a fit config",
    "report": "write report.md for a finished run: report lightning_logs/<study name>",
    "ab-page": "write ab_page.html, blind control-vs-condition pairs for raters: ab-page <run folder>",
    "hook-points": "list block lists, blocks and probe points: hook-points [--weights tiny] [--filter 'layers.*.attention']",
    "encode": "save a study's prompt embeddings (text encoder only): encode --config <study>.yaml --out DIR",
    "serve": "the interactive lab (web page + REST API) on one loaded model: serve [--model.weights tiny]",
}
#: The subcommands LightningCLI runs (llm_dit.trainer_cli); the others are TOOLS in llm_dit.cli.
TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")
HELP = "\n".join([
    f"usage: {PROG} <subcommand> [options]",
    "",
    "Model-surgery and ablation studies on Z-Image-Turbo (or the embedded tiny model).",
    "",
    "subcommands:",
    *(f"  {name:<12} {line}" for name, line in SUBCOMMANDS.items()),
    "",
    f"`{PROG} <subcommand> --help` lists a subcommand's options. Errors print one line;",
    "set LLM_DIT_DEBUG=1 for the traceback.",
])
# Parse errors raise (exit_on_error=False) so `llm_dit.cli.main` can print them as one line.
PARSER_KWARGS: dict[str, Any] = {
    "prog": PROG,
    "exit_on_error": False,
    **{name: {"exit_on_error": False} for name in TRAINER_SUBCOMMANDS},
}
