"""Command line: `python -m llm_dit.cli predict|fit|validate|test --config ...` plus `report`, `ab-page`
and `hook-points` (`python -m llm_dit.cli --help` lists them).

Built on LightningCLI (jsonargparse): `--print_config`, `--help` and dotted
overrides such as `--model.init_args.weights /models/Z-Image-Turbo` or
`--data.init_args.study.seeds [1,2]` come for free. Every run's outputs land in
`<trainer.default_root_dir>/lightning_logs/<run name>/`. Bad input ends in one
`error:` line and exit code 2 (llm_dit.errors).
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningDataModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

import surgery
from callbacks.writer import arrange_callbacks
from llm_dit import errors, quiet
from llm_dit.models.loading import load_components, transformer_config
from llm_dit.module import ZImageModule
from llm_dit.report import export_ab_page, write_report
from llm_dit.training.adapter_files import usage
from llm_dit.training.style_adapter import check_adapters_base, check_adapters_fit, first_adapters
from llm_dit.encode_study import encode_main

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
# Parse errors raise (exit_on_error=False) so `main` can print them as one line.
PARSER_KWARGS: dict[str, Any] = {
    "prog": PROG,
    "exit_on_error": False,
    **{name: {"exit_on_error": False} for name in ("fit", "validate", "test", "predict")},
}


class StudyCLI(LightningCLI):
    """LightningCLI that files every run under lightning_logs/<run name> and always writes results."""

    started = False  # set once the run begins: errors after that are bugs unless UserFacing (llm_dit.errors)

    def instantiate_trainer(self, **kwargs: Any):
        config = self._get(self.config_init, "trainer", default={})
        if config.get("logger") in (None, True):
            kwargs["logger"] = TensorBoardLogger(
                save_dir=config.get("default_root_dir") or os.getcwd(),
                name="lightning_logs",
                version=run_name(self.datamodule),
                default_hp_metric=False,
            )
        trainer = super().instantiate_trainer(**kwargs)
        ensure_writer_last(trainer, self.subcommand)
        study = getattr(self.datamodule, "study", None)
        if study is not None and first_adapters(c.surgery for c in study.resolved_conditions()):
            trainer.callbacks.insert(0, AdapterBaseCheck([c.surgery for c in study.resolved_conditions()]))
        return trainer

    def before_predict(self) -> None:
        self.validate_before_run()
        self.started = True

    def before_fit(self) -> None:
        self.started = True

    def before_validate(self) -> None:
        self.started = True

    def before_test(self) -> None:
        self.started = True

    def after_fit(self) -> None:
        folder = getattr(self.model, "exported_adapter", None)
        if folder is not None and self.trainer.is_global_zero:
            print(adapter_message(folder))

    def validate_before_run(self) -> None:
        study = getattr(self.datamodule, "study", None)
        if study is not None:
            self.model.validate_study(study, getattr(self.datamodule, "items", None))
            check_adapters_fit([c.surgery for c in study.resolved_conditions()],
                               transformer_config(self.model.hparams.weights))
        for callback in self.trainer.callbacks:  # metric weights that were set must load (one-line error)
            if callable(getattr(callback, "check_before_run", None)):
                callback.check_before_run()

    def predict(self, model, datamodule=None, ckpt_path=None, return_predictions=None, **_: Any) -> None:
        """Predictions go to the writer callbacks; keeping them in memory would hold every image."""
        self.trainer.predict(model, datamodule=datamodule, ckpt_path=ckpt_path, return_predictions=False)


ADAPTER_PREDICT_CONFIG = "configs/refiner_style_adapter_predict.yaml"


def adapter_message(folder: str | os.PathLike) -> str:
    """Where `fit` wrote the adapter and how a study uses it.

    The shipped predict config names the adapter relative to the folder it runs from
    (lightning_logs/<run>/adapter), so the hint says which folder that is.
    """
    folder = Path(folder).resolve()
    root = folder.parents[2]  # <root>/lightning_logs/<run>/adapter
    shown = os.path.relpath(folder) if root == Path.cwd().resolve() else str(folder)
    config = Path(__file__).resolve().parents[1] / ADAPTER_PREDICT_CONFIG
    here = root == Path.cwd().resolve()
    command = f"{PROG} predict --config {ADAPTER_PREDICT_CONFIG if here and Path(ADAPTER_PREDICT_CONFIG).is_file() else config}"
    run_from = "" if here else f"cd {root} && "
    return "\n".join([
        f"adapter written to {shown}/ (adapter.safetensors + adapter.json)",
        usage(shown),
        f"or run the shipped adapter study on it: {run_from}{command}",
    ])


def run_name(datamodule: Any) -> str:
    study = getattr(datamodule, "study", None)
    if study is not None:
        return study.name
    return getattr(datamodule, "run_name", None) or "run"


class AdapterBaseCheck(Callback):
    """After the model loads and before the first image: every style adapter belongs to these weights."""

    def __init__(self, surgery_lists: list[list[dict[str, Any]]]) -> None:
        self.surgery_lists = surgery_lists

    def on_predict_start(self, trainer, pl_module) -> None:
        check_adapters_base(self.surgery_lists, pl_module.transformer)


def ensure_writer_last(trainer, subcommand: str | None) -> None:
    """Add a StudyWriter to predict runs that have none, and save config.yaml only once the writer
    has checked the run folder (callbacks.writer.arrange_callbacks)."""
    arrange_callbacks(trainer, subcommand)


def cli_main(args: list[str] | None = None) -> StudyCLI | None:
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
    # LightningCLI reads sys.argv itself; passing it again as `args=` only earns a warning.
    from_argv = {} if args == sys.argv[1:] else {"args": args}
    return StudyCLI(
        ZImageModule,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"enable_model_summary": False},
        parser_kwargs=PARSER_KWARGS,
        **from_argv,
    )


def _report(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m llm_dit.cli report", description="Write report.md for a finished run.")
    parser.add_argument("run_dir", help="a run folder: lightning_logs/<study name>")
    options = parser.parse_args(args)
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
    components = load_components(options.weights)
    rows = surgery.hook_points(components.transformer, options.filter)
    if not rows:
        raise SystemExit(f"no module matches {' or '.join(options.filter)}; try --filter '*' to see every name")
    print(surgery.format_hook_points(rows))


def _encode(args: list[str]) -> None:
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


if __name__ == "__main__":
    main()
