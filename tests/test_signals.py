"""SIGTERM / SIGINT: the batch in flight is finished and written, the table merged, and the run
exits with a line saying how to resume; the resumed run completes the study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from callbacks.writer import read_rows

pytestmark = pytest.mark.slow

SCRIPT = r'''
import sys, time
from pathlib import Path
import torch, lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from callbacks.writer import StudyWriter
from llm_dit.data import StudyDataModule
from llm_dit.module import ZImageModule
from llm_dit.study import Study

torch.set_num_threads(1)
root = Path(sys.argv[1])

class Marker(Callback):
    """Leaves a file per finished batch and slows the run, so the test can signal it mid-run."""
    def __init__(self):
        self.seen = 0
    def on_predict_batch_end(self, *args, **kwargs):
        self.seen += 1
        (root / f"batch{self.seen}").touch()
        time.sleep(float(sys.argv[2]))

study = Study(name="signals", prompts=["A cat", "A dog"], seeds=[1, 2],
              conditions=[{"name": "short", "sampler": {"steps": 1}}],
              sampler={"steps": 2, "height": 32, "width": 32})
trainer = L.Trainer(accelerator="cpu", devices=1, default_root_dir=root, enable_progress_bar=False,
                    enable_model_summary=False, logger=TensorBoardLogger(root, name="lightning_logs", version="signals"),
                    callbacks=[Marker(), StudyWriter()])
trainer.predict(ZImageModule(weights="tiny-random"), datamodule=StudyDataModule(study, batch_size=2), return_predictions=False)
'''


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_the_batch_writes_merges_and_says_how_to_resume(tmp_path, signum):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, str(script), str(tmp_path), "2.0"], stderr=subprocess.PIPE,
                               text=True, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 180
    while not (tmp_path / "batch1").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its first batch"
        time.sleep(0.1)
    process.send_signal(signum)  # arrives while batch 1's callbacks run, before the writer writes it
    _, err = process.communicate(timeout=180)
    assert process.returncode == 128 + signum, err
    lines = [line for line in err.splitlines() if line.startswith("stopped by ")]
    assert len(lines) == 1 and signal.Signals(signum).name in lines[0]
    assert "run the same command again to resume" in lines[0]
    folder = tmp_path / "lightning_logs" / "signals"
    rows = read_rows(folder / "results.jsonl")
    assert len(rows) == 2  # batch 1, in flight when the signal came, was written
    assert sorted(str(p.relative_to(folder)) for p in folder.glob("images/*/*.png")) == sorted(r["image"] for r in rows)
    assert not list(folder.glob("results.rank*.jsonl"))  # merged
    assert not (tmp_path / "batch3").exists()  # stopped after the batch in flight
    if signum != signal.SIGTERM:
        return  # resuming is the same after either signal: run it once

    resumed = subprocess.run([sys.executable, str(script), str(tmp_path), "0"], stderr=subprocess.PIPE, text=True,
                             env=env, cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "[6 new, 2 resumed (8 of 8 items)]" in resumed.stderr
    assert len(read_rows(folder / "results.jsonl")) == 8
