"""Command line: `python -m llm_dit.cli predict|fit|validate|test --config ...` plus `report` and `hook-points`.

Built on LightningCLI (jsonargparse): `--print_config`, `--help` and dotted
overrides such as `--model.init_args.weights /models/Z-Image-Turbo` or
`--data.init_args.study.seeds [1,2]` come for free. Every run's outputs land in
`<trainer.default_root_dir>/lightning_logs/<run name>/`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from llm_dit import quiet
from llm_dit.module import ZImageModule

USER_ERRORS = (ValueError, FileNotFoundError, ImportError)


class StudyCLI(LightningCLI):
    """LightningCLI that files every run under lightning_logs/<run name> and always writes results."""

    started = False  # set once the run begins: errors after that are bugs, not bad input

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
        return trainer

    def before_predict(self) -> None:
        self.validate_before_run()
        self.started = True

    def before_fit(self) -> None:
        self.started = True

    def validate_before_run(self) -> None:
        study = getattr(self.datamodule, "study", None)
        if study is not None:
            self.model.validate_study(study)

    def predict(self, model, datamodule=None, ckpt_path=None, return_predictions=None, **_: Any) -> None:
        """Predictions go to the writer callbacks; keeping them in memory would hold every image."""
        self.trainer.predict(model, datamodule=datamodule, ckpt_path=ckpt_path, return_predictions=False)


def run_name(datamodule: Any) -> str:
    study = getattr(datamodule, "study", None)
    if study is not None:
        return study.name
    return getattr(datamodule, "run_name", None) or "run"


def ensure_writer_last(trainer, subcommand: str | None) -> None:
    """Add a StudyWriter to predict runs that have none, and run writers after the metric callbacks.

    Metric callbacks put per-item values into the batch's outputs; the writer
    stores them, so it must see each batch last.
    """
    from lightning.pytorch.callbacks import BasePredictionWriter

    from callbacks.writer import StudyWriter

    callbacks = trainer.callbacks
    writers = [c for c in callbacks if isinstance(c, BasePredictionWriter)]
    if subcommand == "predict" and not writers:
        writers = [StudyWriter()]
    others = [c for c in callbacks if not isinstance(c, BasePredictionWriter)]
    trainer.callbacks[:] = others + writers


def cli_main(args: list[str] | None = None) -> StudyCLI | None:
    quiet.install()  # before any third-party code speaks
    args = list(sys.argv[1:] if args is None else args)
    if args and args[0] == "report":
        return _report(args[1:])
    if args and args[0] == "hook-points":
        return _hook_points(args[1:])
    if args and args[0] == "ab-page":
        return _ab_page(args[1:])
    return StudyCLI(
        ZImageModule,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        trainer_defaults={"enable_model_summary": False},
    )


def _report(args: list[str]) -> None:
    import argparse

    from llm_dit.report import write_report

    parser = argparse.ArgumentParser(prog="python -m llm_dit.cli report", description="Write report.md for a finished run.")
    parser.add_argument("run_dir", help="a run folder: lightning_logs/<study name>")
    options = parser.parse_args(args)
    print(write_report(options.run_dir))


def _ab_page(args: list[str]) -> None:
    import argparse

    from llm_dit.report import export_ab_page

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
    import argparse

    import surgery
    from llm_dit.models.loading import load_components

    parser = argparse.ArgumentParser(prog="python -m llm_dit.cli hook-points", description="List every block surgery can target.")
    parser.add_argument("--weights", default="tiny", help="'tiny', a diffusers folder or a hub id")
    options = parser.parse_args(args)
    components = load_components(options.weights)
    print(surgery.format_hook_points(surgery.hook_points(components.transformer)))


def main() -> None:
    try:
        cli_main()
    except USER_ERRORS as error:
        if os.environ.get("LLM_DIT_DEBUG") or _run_started(error):
            raise
        print(f"error: {error}  (set LLM_DIT_DEBUG=1 for a traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def _run_started(error: BaseException) -> bool:
    """True when the error came from inside a running trainer (show its traceback)."""
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
