"""End to end: the CLI's predict writes PNGs, a results table and TensorBoard events, and resumes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks.writer import StudyWriter, read_rows
from llm_dit.cli import cli_main, main
from llm_dit.data import StudyDataModule
from llm_dit.module import ZImageModule
from llm_dit.study import Study

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_baseline_config_writes_images_table_and_events(tmp_path):
    cli_main(["predict", "--config", str(CONFIGS / "baseline.yaml"), "--trainer.default_root_dir", str(tmp_path)])
    run = tmp_path / "lightning_logs" / "baseline"
    rows = read_rows(run / "results.jsonl")
    assert len(rows) == 40 and len({r["item_id"] for r in rows}) == 40  # 20 world prompts x 2 seeds
    assert all((run / r["image"]).is_file() for r in rows)
    assert all(r["seconds"] > 0 and r["steps"] == 8 for r in rows)
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "config.yaml").is_file() and (run / "study.json").is_file() and (run / "environment.json").is_file()


class CrashAfter(Callback):
    """Simulates a crash (not a clean interrupt) after `batches` batches."""

    def __init__(self, batches: int) -> None:
        self.batches, self.seen = batches, 0

    def on_predict_batch_end(self, *args, **kwargs) -> None:
        self.seen += 1
        if self.seen == self.batches:
            raise RuntimeError("simulated crash")


def run_study(root: Path, study: Study, extra_callbacks=()) -> ZImageModule:
    module = ZImageModule(weights="tiny-random")
    trainer = L.Trainer(
        accelerator="cpu", devices=1, default_root_dir=root, enable_progress_bar=False, enable_model_summary=False,
        logger=TensorBoardLogger(root, name="lightning_logs", version=study.name),
        callbacks=[*extra_callbacks, StudyWriter()],
    )
    trainer.predict(module, datamodule=StudyDataModule(study, batch_size=2), return_predictions=False)
    return module


def small_study() -> Study:
    return Study(
        name="resume", prompts=["A cat", "A dog", "A bird"], seeds=[1, 2],
        sampler={"steps": 2, "height": 32, "width": 32},
    )


def test_interrupted_run_resumes_without_repeating(tmp_path):
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_study(tmp_path, small_study(), [CrashAfter(2)])
    run = tmp_path / "lightning_logs" / "resume"
    written_before = {p.name: p.stat().st_mtime_ns for p in run.glob("images/control/*.png")}
    assert 0 < len(written_before) < 6

    module = run_study(tmp_path, small_study())
    rows = read_rows(run / "results.jsonl")
    assert sorted(r["item_id"] for r in rows) == sorted(i.item_id for i in small_study().items())
    assert len(module.finished_items) == len(written_before)
    for name, mtime in written_before.items():  # finished images were not generated again
        assert (run / "images" / "control" / name).stat().st_mtime_ns == mtime


def test_resumed_images_equal_fresh_ones(tmp_path):
    with pytest.raises(RuntimeError):
        run_study(tmp_path / "a", small_study(), [CrashAfter(1)])
    run_study(tmp_path / "a", small_study())
    run_study(tmp_path / "b", small_study())
    for png in (tmp_path / "b" / "lightning_logs" / "resume" / "images" / "control").glob("*.png"):
        other = tmp_path / "a" / "lightning_logs" / "resume" / "images" / "control" / png.name
        assert png.read_bytes() == other.read_bytes()


class ModelLoaded(BaseException):
    """Raised by the guard; a BaseException so no `except Exception` on the way can swallow it."""


@pytest.fixture
def no_model_loads(monkeypatch):
    """Make any model load raise ModelLoaded. Patches the names the code calls: llm_dit.module
    imported `load_components` into its own namespace, so patching only llm_dit.models.loading
    would guard nothing (test_the_guard_fails_when_a_model_loads proves this one does)."""
    import llm_dit.models.loading as loading
    import llm_dit.module as module

    def refuse(*args, **kwargs):
        raise ModelLoaded(f"a model was loaded: load_components{args}")

    monkeypatch.setattr(module, "load_components", refuse)
    monkeypatch.setattr(loading, "load_components", refuse)


def run_main(monkeypatch, tmp_path: Path, *args: str) -> None:
    monkeypatch.setattr("sys.argv", ["llm_dit", "predict", "--config", str(CONFIGS / "baseline.yaml"),
                                     "--trainer.default_root_dir", str(tmp_path), *args])
    main()


def test_the_guard_fails_when_a_model_loads(tmp_path, monkeypatch, no_model_loads):
    """A valid config does load the model: the guard must stop it, or it guards nothing."""
    with pytest.raises(ModelLoaded, match="load_components"):
        run_main(monkeypatch, tmp_path)
    assert not list(tmp_path.rglob("*.png"))


@pytest.mark.parametrize(
    "override, message",
    [
        (["--data.init_args.study.sampler.height", "100"], "multiple of 16"),
        (["--data.init_args.study.sampler.steps", "0"], "steps must be"),
        (["--data.init_args.study.encoding.hidden_layer", "-40"], "out of range"),
        (["--data.init_args.study.encoding.long_prompt_mode", "squash"], "long_prompt_mode"),
        (["--data.init_args.study.prompts", "[]", "--data.init_args.study.prompts_file", "null"], "no prompts"),
        (["--model.weights", "/no/such/folder"], "does not exist"),
    ],
)
def test_bad_input_fails_in_one_line_before_loading(tmp_path, capsys, monkeypatch, no_model_loads, override, message):
    with pytest.raises(SystemExit) as exit_info:
        run_main(monkeypatch, tmp_path, *override)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err


@pytest.mark.parametrize("callback, setting", [
    ("callbacks.clip_score.ClipScoreCallback", "pretrained"),
    ("callbacks.fid.FidCallback", "weights"),
    ("callbacks.lpips_diversity.LpipsDiversityCallback", "backbone_weights"),
])
def test_set_metric_weights_that_do_not_load_stop_the_run_before_any_model(tmp_path, capsys, monkeypatch,
                                                                          no_model_loads, callback, setting):
    """A study must not run for hours and end without its headline metric: weights that were set
    but do not load stop the CLI with one line naming the file and the cause."""
    import yaml

    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"not a checkpoint")
    config = yaml.safe_load((CONFIGS / "baseline.yaml").read_text())
    init_args = {setting: str(bad)}
    if setting == "weights":
        init_args["reference_dir"] = str(tmp_path)
    config["trainer"]["callbacks"].insert(0, {"class_path": callback, "init_args": init_args})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setattr("sys.argv", ["llm_dit", "predict", "--config", str(path), "--trainer.default_root_dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert f"{setting}={str(bad)!r} could not be loaded (" in line  # file and cause, on one line
    assert line.endswith("(set LLM_DIT_DEBUG=1 for a traceback)")
    assert not list(tmp_path.rglob("*.png"))
