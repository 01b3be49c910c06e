"""Where a `python -m llm_dit.cli` run spends its fixed costs: start-up and wrap-up (issue 20).

    python benchmarks/startup_wrapup.py [--json out.json] -- predict --config configs/refiner_skip.yaml ...

Runs the CLI in a child interpreter (as `python -m llm_dit.cli` would, through `llm_dit.cli.console`)
with wall-clock marks, in seconds since the child was started:

    cli_imported        `import llm_dit.cli` done
    lightning_imported  Lightning's CLI imported (the first thing a Lightning subcommand loads)
    parser_begins       LightningCLI builds its parser (ZImageModule and the callbacks imported)
    run_begins          arguments parsed, classes instantiated, the subcommand starts
    model_loaded        on_predict_start: weights loaded, the first batch starts
    first_batch_done    the first batch written (start -> first image)
    last_batch_done     the last batch written
    predict_end_done    every on_predict_end hook done (review grids, figures, summaries)
    atexit              the last atexit hook starts
    exited              the child process has ended (the parent's clock)

and prints them as JSON (also to --json). "after the last image" = exited - last_batch_done.
On a shared CPU set OMP_NUM_THREADS=1: torch's thread pool waits on busy cores otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(marks_file: str, cli_args: list[str]) -> None:
    """Run the CLI in this process with marks; write them to `marks_file` at exit."""
    import atexit

    started = float(os.environ["STARTUP_WRAPUP_T0"])
    marks: dict[str, float] = {}

    def mark(name: str, last: bool = False) -> None:
        if last or name not in marks:
            marks[name] = time.time() - started

    def write() -> None:
        mark("atexit")
        Path(marks_file).write_text(json.dumps(marks))

    atexit.register(write)  # registered first, so it runs after every other atexit hook
    sys.argv = ["llm_dit.cli", *cli_args]
    import llm_dit.cli as cli

    mark("cli_imported")
    run = cli.cli_main

    def cli_main(args: list[str] | None = None):
        if args and args[0] in ("fit", "validate", "test", "predict"):
            import lightning.pytorch.cli as lightning_cli
            import lightning.pytorch.trainer.call as call

            mark("lightning_imported")
            hooks = call._call_callback_hooks

            def timed_hooks(trainer, hook_name: str, *a, **k):
                if hook_name == "on_predict_start":
                    mark("model_loaded")
                out = hooks(trainer, hook_name, *a, **k)
                if hook_name == "on_predict_batch_end":
                    mark("first_batch_done")
                    mark("last_batch_done", last=True)
                elif hook_name == "on_predict_end":
                    mark("predict_end_done")
                return out

            call._call_callback_hooks = timed_hooks
            init, subcommand = lightning_cli.LightningCLI.__init__, lightning_cli.LightningCLI._run_subcommand

            def timed_init(self, *a, **k):
                mark("parser_begins")
                return init(self, *a, **k)

            def timed_subcommand(self, *a, **k):
                mark("run_begins")
                return subcommand(self, *a, **k)

            lightning_cli.LightningCLI.__init__ = timed_init
            lightning_cli.LightningCLI._run_subcommand = timed_subcommand
        return run(args)

    cli.cli_main = cli_main
    (getattr(cli, "console", None) or cli.main)()  # checkouts before issue 20 have no `console`


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--json", type=Path, help="also write the marks here")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose llm_dit runs (default: this one)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options, cli_args = parser.parse_known_args()
    cli_args = [a for a in cli_args if a != "--"]
    if options.child:
        child(options.child, cli_args)
        return
    with tempfile.TemporaryDirectory() as folder:
        marks_file = str(Path(folder) / "marks.json")
        started = time.time()
        env = {**os.environ, "STARTUP_WRAPUP_T0": repr(started), "PYTHONPATH": str(options.root.resolve())}
        done = subprocess.run([sys.executable, __file__, "--child", marks_file, "--", *cli_args], cwd=os.getcwd(), env=env)
        exited = time.time() - started
        marks = json.loads(Path(marks_file).read_text()) if Path(marks_file).is_file() else {}
    marks["exited"] = exited
    if "last_batch_done" in marks:
        marks["after_last_image"] = exited - marks["last_batch_done"]
    result = {"command": " ".join(["python", "-m", "llm_dit.cli", *cli_args]), "root": str(options.root),
              "returncode": done.returncode,
              "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
              "marks_s": {k: round(v, 2) for k, v in marks.items()}}
    text = json.dumps(result, indent=1)
    print(text)
    if options.json:
        options.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
