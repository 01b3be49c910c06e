"""Command line: `python -m llm_dit.cli predict|fit|validate|test --config ...` plus `report`, `ab-page`,
`hook-points`, `encode` and `serve` (`python -m llm_dit.cli --help` lists them).

This module only dispatches: each subcommand's code (and with it torch, Lightning, diffusers,
transformers, FastAPI) is imported when that subcommand runs, so `--help` and a misspelt
subcommand answer at once (tests/test_lazy_imports.py keeps it so). The Lightning subcommands
live in llm_dit.trainer_cli, the names and help text in llm_dit.commands. Bad input ends in one
`error:` line and exit code 2 (llm_dit.errors).
"""

from __future__ import annotations

import argparse
import difflib
import gc
import sys
from typing import Any

from llm_dit import errors, quiet
from llm_dit.commands import HELP, PARSER_KWARGS, PROG, SUBCOMMANDS

__all__ = ["HELP", "PARSER_KWARGS", "PROG", "SUBCOMMANDS", "TOOLS", "cli_main", "console", "main"]


def cli_main(args: list[str] | None = None) -> Any:
    """Run one subcommand; a Lightning one returns its StudyCLI (llm_dit.trainer_cli), the others None."""
    quiet.install()  # before any third-party code speaks
    args = list(sys.argv[1:] if args is None else args)
    if args and args[0] in TOOLS:
        return TOOLS[args[0]](args[1:])
    if args and not args[0].startswith("-") and args[0] not in SUBCOMMANDS:
        close = difflib.get_close_matches(args[0], list(SUBCOMMANDS), n=1)
        raise ValueError(f"unknown subcommand {args[0]!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                         f"choose one of {', '.join(SUBCOMMANDS)} (`{PROG} --help` says what each does)")
    if not args or args[0] in ("-h", "--help"):
        print(HELP)
        return None
    from llm_dit.trainer_cli import run_trainer_cli  # Lightning, torch and the model code

    return run_trainer_cli(args)


def _report(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m llm_dit.cli report", description="Write report.md for a finished run.")
    parser.add_argument("run_dir", help="a run folder: lightning_logs/<study name>")
    options = parser.parse_args(args)
    from llm_dit.report import write_report

    print(write_report(options.run_dir))


def _ab_page(args: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m llm_dit.cli ab-page",
        description="Write ab_page.html: blind control-vs-condition pairs for a human preference study.",
    )
    parser.add_argument("run_dir", help="a run folder: lightning_logs/<study name>")
    parser.add_argument("--pairs-per-condition", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embed-images", action="store_true", help="inline the images (hides file names from raters)")
    options = parser.parse_args(args)
    from llm_dit.report import export_ab_page

    print(export_ab_page(options.run_dir, pairs_per_condition=options.pairs_per_condition, seed=options.seed,
                         embed_images=options.embed_images))


def _hook_points(args: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m llm_dit.cli hook-points",
        description="List the block lists and blocks surgery can target and the modules probes can record.",
    )
    parser.add_argument("--weights", default="tiny", help="'tiny', a diffusers folder or a hub id")
    parser.add_argument(
        "--filter", action="append", default=None, metavar="GLOB",
        help="list every module whose dotted name matches, at any depth, e.g. 'layers.*.attention', "
             "'cap_embedder*', '*' for all (repeatable); without it: block lists, blocks and top-level modules",
    )
    options = parser.parse_args(args)
    import surgery
    from llm_dit.models.loading import load_components

    components = load_components(options.weights)
    rows = surgery.hook_points(components.transformer, options.filter)
    if not rows:
        raise SystemExit(f"no module matches {' or '.join(options.filter)}; try --filter '*' to see every name")
    print(surgery.format_hook_points(rows))


def _encode(args: list[str]) -> None:
    from llm_dit.encode_study import encode_main

    encode_main(args)


def _serve(args: list[str]) -> None:
    from llm_dit.lab.serve import serve_main

    serve_main(args)


# Subcommands outside LightningCLI; each takes the arguments after its name.
TOOLS = {"report": _report, "ab-page": _ab_page, "hook-points": _hook_points, "encode": _encode, "serve": _serve}


def main(args: list[str] | None = None) -> None:
    """The console entry: bad input and known faults end in one `error:` line and exit code 2."""
    args = list(sys.argv[1:] if args is None else args)
    try:
        cli_main(args)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as error:
        subcommand = args[0] if args and args[0] in SUBCOMMANDS else None
        code = errors.report(error, started=_run_started(error), subcommand=subcommand)
        if code is None:
            raise
        raise SystemExit(code) from None


def _run_started(error: BaseException) -> bool:
    """True when the error came from inside a running trainer (loading the model, generating)."""
    traceback = error.__traceback__
    while traceback is not None:
        if traceback.tb_frame.f_code.co_name in ("_run_subcommand",) and traceback.tb_next is not None:
            frame_self = traceback.tb_frame.f_locals.get("self")
            if getattr(frame_self, "started", False):
                return True
        traceback = traceback.tb_next
    return False


def console() -> None:
    """`python -m llm_dit.cli` (and `python -m llm_dit`): `main`, then a quick exit.

    The process ends right after: `gc.freeze()` keeps the interpreter's final garbage collections
    from walking every object torch, Lightning and diffusers made (about 1 s of a run's wrap-up on
    CPU, benchmarks/NOTES.md). Objects are still released and atexit hooks (event-file flushes)
    still run. Not in `main`, which tests call in a process that goes on.
    """
    try:
        main()
    finally:
        gc.freeze()


if __name__ == "__main__":
    console()
