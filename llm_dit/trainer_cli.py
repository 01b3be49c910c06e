"""The Lightning subcommands (predict, fit, validate, test): StudyCLI on ZImageModule.

llm_dit.cli imports this module only when one of these subcommands runs: building their parser
needs Lightning and ZImageModule's signature (and so torch, diffusers and transformers), which
`--help`, `report` or a misspelt subcommand should not pay for.

Built on LightningCLI (jsonargparse): `--print_config`, `--help` and dotted overrides such as
`--model.init_args.weights /models/Z-Image-Turbo` or `--data.init_args.study.seeds [1,2]` come
for free. Every run's outputs land in `<trainer.default_root_dir>/lightning_logs/<run name>/`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningDataModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks.writer import arrange_callbacks
from llm_dit.commands import PARSER_KWARGS, PROG
from llm_dit.models.loading import transformer_config
from llm_dit.module import ZImageModule
from llm_dit.training.adapter_files import usage
from llm_dit.training.style_adapter import check_adapters_base, check_adapters_fit, first_adapters

ADAPTER_PREDICT_CONFIG = "configs/refiner_style_adapter_predict.yaml"


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


def run_trainer_cli(args: list[str]) -> StudyCLI:
    """Parse and run one Lightning subcommand (`args` starts with predict, fit, validate or test)."""
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


def adapter_predict_config(run: str) -> str:
    """The shipped study that uses the adapter of fit run `run`: `configs/<run>_predict.yaml` when
    there is one (world_style_adapter -> world_style_adapter_predict.yaml), else the refiner's."""
    candidate = f"configs/{run}_predict.yaml"
    return candidate if (Path(__file__).resolve().parents[1] / candidate).is_file() else ADAPTER_PREDICT_CONFIG


def adapter_message(folder: str | os.PathLike) -> str:
    """Where `fit` wrote the adapter and how a study uses it.

    The shipped predict config names the adapter relative to the folder it runs from
    (lightning_logs/<run>/adapter), so the hint says which folder that is.
    """
    folder = Path(folder).resolve()
    root = folder.parents[2]  # <root>/lightning_logs/<run>/adapter
    shown = os.path.relpath(folder) if root == Path.cwd().resolve() else str(folder)
    relative = adapter_predict_config(folder.parent.name)
    config = Path(__file__).resolve().parents[1] / relative
    here = root == Path.cwd().resolve()
    command = f"{PROG} predict --config {relative if here and Path(relative).is_file() else config}"
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
