"""One run per run folder: a second run stops with one line naming the holder, or waits when asked."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks.writer import StudyWriter, read_rows
from llm_dit.data import StudyDataModule
from llm_dit.module import ZImageModule
from llm_dit.run_folder import RunFolderError, RunFolderLock
from llm_dit.study import Study

pytestmark = pytest.mark.usefixtures("one_thread")


def run(root: Path, wait_for_lock: bool = False) -> None:
    study = Study(name="locked", prompts=["A cat"], seeds=[1, 2], sampler={"steps": 1, "height": 32, "width": 32})
    trainer = L.Trainer(
        accelerator="cpu", devices=1, default_root_dir=root, enable_progress_bar=False, enable_model_summary=False,
        logger=TensorBoardLogger(root, name="lightning_logs", version="locked"), callbacks=[StudyWriter()],
    )
    trainer.predict(ZImageModule(weights="tiny-random"), datamodule=StudyDataModule(study, wait_for_lock=wait_for_lock),
                    return_predictions=False)


def test_second_run_on_a_locked_folder_stops_before_loading(tmp_path, monkeypatch):
    folder = tmp_path / "lightning_logs" / "locked"
    # the first run is another process
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from llm_dit.run_folder import RunFolderLock; "
        f"lock = RunFolderLock(Path({str(folder)!r})); lock.acquire(); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr("llm_dit.module.load_components", lambda *a, **k: pytest.fail("a model was loaded"))
        with pytest.raises(RunFolderError) as error:
            run(tmp_path)
        message = str(error.value)
        assert "\n" not in message and f"in use by another run (pid {holder.pid} on " in message
        assert "--data.init_args.wait_for_lock true" in message
        assert not (folder / "images").exists()
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.undo()
    run(tmp_path)  # the lock dies with its process (even killed)
    assert len(read_rows(folder / "results.jsonl")) == 2


def test_wait_for_lock_waits_for_the_other_run(tmp_path, capsys):
    folder = tmp_path / "lightning_logs" / "locked"
    lock = RunFolderLock(folder)
    lock.acquire()
    released = []

    def release_later() -> None:
        time.sleep(1.0)
        released.append(time.monotonic())
        lock.release()

    thread = threading.Thread(target=release_later)
    thread.start()
    run(tmp_path, wait_for_lock=True)
    thread.join()
    assert released and "waiting for run folder" in capsys.readouterr().err
    assert len(read_rows(folder / "results.jsonl")) == 2
