"""Resume by settings, never degrading: changed settings stop the run before any model loads,
finished rows are never rewritten, damaged files are reported and their items made again with
their first batch mates (bit-identical to an uninterrupted run), the bar counts only new images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks.detail import DetailScoreCallback
from callbacks.progress import NewItemsProgressBar, NewItemsRichProgressBar
from callbacks.timing import TimingCallback
from callbacks.writer import StudyWriter, read_rows
from llm_dit.data import StudyDataModule, group_into_batches
from llm_dit.module import ZImageModule
from llm_dit.module_settings import group_options
from llm_dit.run_folder import RunFolderError
from llm_dit.study import Study

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def study_spec(**changes) -> dict:
    spec = {
        "name": "resume", "prompts": ["A cat", "A dog"], "seeds": [1, 2],
        "sampler": {"steps": 2, "height": 32, "width": 32},
        "conditions": [{"name": "skip", "surgery": [{"variant": "skip"}]}],
    }
    spec.update(changes)
    return spec


def run(root: Path, spec: dict, callbacks=(), overwrite_changed=False, batch_size=2, bar=None, **module) -> StudyWriter:
    writer = StudyWriter()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, default_root_dir=root, enable_model_summary=False,
        enable_progress_bar=bar is not None, logger=TensorBoardLogger(root, name="lightning_logs", version="resume"),
        callbacks=[*callbacks, *([bar] if bar else []), writer],
    )
    data = StudyDataModule(Study(**spec), batch_size=batch_size, overwrite_changed=overwrite_changed)
    trainer.predict(ZImageModule(weights="tiny-random", **group_options(**module)), datamodule=data, return_predictions=False)
    return writer


def folder(root: Path) -> Path:
    return root / "lightning_logs" / "resume"


def pngs(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder(root))): p.read_bytes() for p in folder(root).glob("images/*/*.png")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    run(root, study_spec(), callbacks=[DetailScoreCallback(), TimingCallback()])
    return root


@pytest.fixture
def copy(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


def no_model_loads(monkeypatch):
    import llm_dit.models.loading as loading

    monkeypatch.setattr(loading, "load_components", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr("llm_dit.module.load_components", lambda *a, **k: pytest.fail("a model was loaded"))


def skip_condition(**changes) -> list[dict]:
    return [{"name": "skip", "surgery": [{"variant": "skip"}], **changes}]


@pytest.mark.parametrize(
    "changes, condition, expected",
    [
        ({"sampler": {"steps": 3, "height": 32, "width": 32}}, "control", "sampler.steps 2 -> 3"),
        ({"conditions": skip_condition(surgery=[{"variant": "truncate", "use_layers": 1}])}, "skip", "surgery"),
        ({"conditions": skip_condition(encoding={"hidden_layer": -3})}, "skip", "encoding.hidden_layer -2 -> -3"),
        ({"sampler": {"steps": 2, "height": 48, "width": 32}}, "control", "sampler.height 32 -> 48"),
        ({"prompts": ["A cat", "A horse"]}, "control", "prompt text"),
    ],
    ids=["sampler", "surgery", "encoding", "size", "prompt"],
)
def test_changed_settings_stop_before_any_model_loads(copy, monkeypatch, changes, condition, expected):
    table = (folder(copy) / "results.jsonl").read_bytes()
    no_model_loads(monkeypatch)
    with pytest.raises(RunFolderError) as error:
        run(copy, study_spec(**changes))
    message = str(error.value)
    assert "\n" not in message
    assert f"'{condition}'" in message and expected in message
    assert "--data.init_args.overwrite_changed true" in message and "new run folder" in message
    assert (folder(copy) / "results.jsonl").read_bytes() == table


def test_overwrite_changed_regenerates_just_the_changed_items(copy, finished):
    before = pngs(copy)
    spec = study_spec(conditions=skip_condition(sampler={"steps": 1}))
    run(copy, spec, overwrite_changed=True)
    after = pngs(copy)
    rows = {r["item_id"]: r for r in read_rows(folder(copy) / "results.jsonl")}
    assert len(rows) == 8
    assert all(rows[i]["steps"] == (1 if i.startswith("skip/") else 2) for i in rows)
    for name in before:
        assert (before[name] == after[name]) == name.startswith("images/control/"), name
    # the regenerated items equal a fresh run of the new settings
    run(copy / "fresh", spec)
    fresh = pngs(copy / "fresh")
    assert all(after[name] == fresh[name] for name in fresh)


def test_changed_weights_stop_before_the_first_image(copy):
    table = folder(copy) / "results.jsonl"
    rows = read_rows(table)
    rows[0]["model_fingerprint"] = "0" * 16  # as if made by other weights under the same settings
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = pngs(copy)
    with pytest.raises(RunFolderError, match=r"\(model weights\).*model fingerprint 0000"):
        run(copy, study_spec())
    assert pngs(copy) == before


def test_model_options_are_settings(copy, monkeypatch):
    no_model_loads(monkeypatch)
    with pytest.raises(RunFolderError, match="model.load.tiny_seed 0 -> 1"):
        run(copy, study_spec(), tiny_seed=1)


def test_resume_never_rewrites_a_finished_row(copy, capsys):
    table = (folder(copy) / "results.jsonl").read_bytes()
    run(copy, study_spec(), callbacks=[DetailScoreCallback(), TimingCallback()])
    assert (folder(copy) / "results.jsonl").read_bytes() == table
    rows = read_rows(folder(copy) / "results.jsonl")
    assert all(r["metric.caption_tokens"] is not None for r in rows)
    tokens = json.loads((folder(copy) / "set_metrics.json").read_text())["caption_tokens"]["conditions"]
    for name in ("control", "skip"):  # resumed items still count, with the lengths their rows hold
        counted = [r["metric.caption_tokens"] for r in rows if r["condition"] == name]
        assert tokens[name]["n"] == 4 and tokens[name]["value"] == pytest.approx(sum(counted) / 4)
    err = capsys.readouterr().err
    assert "0 new, 8 resumed (8 of 8 items)" in err
    assert f"tensorboard --logdir {folder(copy)}" in err and f"python -m llm_dit.cli report {folder(copy)}" in err
    assert len(list(folder(copy).glob("events.out.tfevents.*"))) == 1


def test_unreadable_png_is_reported_and_made_again(copy, finished, capsys):
    damaged = folder(copy) / "images" / "skip" / "p001_s1.png"
    damaged.write_bytes(damaged.read_bytes()[:40])  # truncated
    untouched = folder(copy) / "images" / "control" / "p000_s1.png"
    mtime = untouched.stat().st_mtime_ns
    run(copy, study_spec())
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "images/skip/p001_s1.png" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:") and "skip/p001_s1" in warnings[0]
    assert pngs(copy) == pngs(finished)
    assert untouched.stat().st_mtime_ns == mtime


def test_torn_table_line_is_reported_and_its_item_made_again(copy, finished, capsys):
    run_folder = folder(copy)
    rows = read_rows(run_folder / "results.jsonl")
    torn = next(r for r in rows if r["item_id"] == "control/p001_s2")
    (run_folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r is not torn))
    (run_folder / "results.rank0.jsonl").write_text(json.dumps(torn)[:70])  # a kill mid-write: no newline
    run(copy, study_spec())
    err = capsys.readouterr().err
    assert "results.rank0.jsonl line 1 is torn" in err and "control/p001_s2 will be made again" in err
    after = read_rows(run_folder / "results.jsonl")
    assert sorted(r["item_id"] for r in after) == sorted(r["item_id"] for r in rows)
    assert pngs(copy) == pngs(finished)
    assert not list(run_folder.glob("results.rank*.jsonl"))


class CrashAfter(Callback):
    def __init__(self, batches: int) -> None:
        self.batches, self.seen = batches, 0

    def on_predict_batch_end(self, *args, **kwargs) -> None:
        self.seen += 1
        if self.seen == self.batches:
            raise RuntimeError("simulated crash")


def test_item_made_again_with_its_first_batch_is_bit_identical(tmp_path):
    # A shift sweep shares its first step across conditions (step cache), so a difference in one
    # item would also spread to the same seed of later conditions.
    spec = study_spec(prompts=["A cat"], seeds=[1, 2, 3], conditions=[],
                      variables={"sampler.shift": [2.0, 5.0]})
    run(tmp_path / "whole", spec)
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    (folder(tmp_path / "resumed") / "images" / "shift=2.0" / "p000_s2.png").unlink()
    writer = run(tmp_path / "resumed", spec)
    assert pngs(tmp_path / "resumed") == pngs(tmp_path / "whole")
    assert writer.mismatched_mates == []  # the batch mate made along was identical too
    rows = {r["item_id"]: r for r in read_rows(folder(tmp_path / "resumed") / "results.jsonl")}
    assert rows["shift=2.0/p000_s2"]["batch"] == ["shift=2.0/p000_s1", "shift=2.0/p000_s2"]


def test_recorded_batches_are_kept():
    items = Study(**study_spec(prompts=["A", "B", "C"], seeds=[1])).items()
    ids = [i.item_id for i in items]
    default = group_into_batches(items, 2)
    assert [[i.item_id for i in b] for b in default] == [ids[0:2], ids[2:3], ids[3:5], ids[5:6]]
    recorded = {ids[1]: (ids[1], ids[2]), ids[2]: (ids[1], ids[2])}
    regrouped = group_into_batches(items, 2, recorded)
    assert [[i.item_id for i in b] for b in regrouped] == [[ids[0]], ids[1:3], ids[3:5], ids[5:6]]


def test_progress_bar_counts_only_new_images(tmp_path):
    with pytest.raises(RuntimeError):
        run(tmp_path, study_spec(), callbacks=[CrashAfter(2)])  # runs before the writer: batch 1 written
    bar = NewItemsProgressBar()
    run(tmp_path, study_spec(), bar=bar)
    assert bar._total == 6 and bar._resumed == 2
    assert bar.predict_progress_bar.n == 6
    shutil.rmtree(tmp_path / "lightning_logs")
    with pytest.raises(RuntimeError):
        run(tmp_path, study_spec(), callbacks=[CrashAfter(2)])
    rich = NewItemsRichProgressBar()
    run(tmp_path, study_spec(), bar=rich)
    task = rich.progress.tasks[rich.predict_progress_bar_id] if rich.progress else None
    assert rich._total == 6 and rich._resumed == 2 and rich._made == 6
    assert task is None or (task.total == 6 and task.completed == 6)


def test_cli_prints_one_error_line_for_changed_settings(tmp_path, capsys, monkeypatch):
    from llm_dit.cli import cli_main, main

    args = ["predict", "--config", str(CONFIGS / "baseline.yaml"), "--trainer.default_root_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false", "--data.init_args.study.sampler.height", "32",
            "--data.init_args.study.sampler.width", "32", "--data.init_args.max_prompts", "3"]
    cli_main([*args, "--data.init_args.study.sampler.steps", "1"])
    first = capsys.readouterr().err
    assert "results: " in first and "[6 new, 0 resumed (6 of 6 items)]" in first
    config = (tmp_path / "lightning_logs" / "baseline" / "config.yaml").read_bytes()
    no_model_loads(monkeypatch)
    monkeypatch.setattr("sys.argv", ["llm_dit", *args, "--data.init_args.study.sampler.steps", "2"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: run folder ") and "Traceback" not in err
    assert "'control' (sampler.steps 1 -> 2)" in errors[0]
    assert (tmp_path / "lightning_logs" / "baseline" / "config.yaml").read_bytes() == config  # the record still says 1
