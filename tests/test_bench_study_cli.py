"""benchmarks/bench_study_cli.py: issue 20's end-to-end harness (llm-dit CLI vs a plain diffusers loop).

The numbers it exists for need the GPU; here it runs as its `--smoke` mode does (tiny-random, 64 px)
so that the harness cannot rot: both sides really run, write the same study's images, and the
timing and ratio arithmetic is checked against hand-made inputs. Nothing here is timed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_harness():
    spec = importlib.util.spec_from_file_location("bench_study_cli", ROOT / "benchmarks" / "bench_study_cli.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = load_harness()


def test_study_sizes_are_the_issues():
    assert bench.STUDIES["study96"].images == 96  # 8 shifts x steps {4, 8, 16} x 2 prompts x 2 seeds
    assert bench.STUDIES["study16"].images == 16
    for study in (*bench.STUDIES.values(), *bench.SMOKE_STUDIES.values()):
        assert 3.0 in study.shifts and 8 in study.steps, "the control shift=3.0,steps=8 must be in the grid"


def test_timing_summary_from_image_times():
    times = [10.0, 11.0, 12.0, 13.0, 14.0, 16.0, 18.0]  # images 5..7 written at 14, 16, 18 s
    summary = bench.timing_summary(times, ended=20.5, expected=7)
    assert summary["complete"] and summary["images"] == 7
    assert (summary["first_image_s"], summary["last_image_s"], summary["after_last_image_s"]) == (10.0, 18.0, 2.5)
    # steady state: images 6 and 7 after image 5 at 14 s -> 2 images in 4 s = 1800 images/h
    assert summary["steady_images_per_h"] == 1800.0
    assert not bench.timing_summary(times[:3], ended=20.0, expected=7)["complete"]


def test_comparisons_are_diffusers_over_ours(tmp_path):
    results = {
        "ours/s/warm": {"complete": True, "end_to_end_s": 50.0, "steady_images_per_h": 3000.0},
        "diffusers/s/warm": {"complete": True, "end_to_end_s": 70.0, "steady_images_per_h": 2500.0},
        "ours/s/cold": {"complete": False, "end_to_end_s": 10.0},
        "diffusers/s/cold": {"complete": True, "end_to_end_s": 70.0},
    }
    ratios = bench.comparisons(results)
    assert ratios == {"s/warm": {"end_to_end": 1.4, "steady_state": 1.2}}  # incomplete pairs give no ratio


def test_low_memory_runs_encode_first_then_predict_from_saved_features(tmp_path):
    setup = bench.Setup(weights=tmp_path / "w", work=tmp_path, dtype="bfloat16", compile=True, batch_size=4)
    runs = {spec.side: spec for spec in bench.planned_runs(bench.STUDIES, ["cold", "warm"], smoke=False)}
    assert (runs["ours_16gib"].cap_gib, runs["ours_12gib"].cap_gib) == (16.0, 12.0)
    processes, _ = bench.commands(runs["ours_12gib"], setup, tmp_path / "run")
    encode, predict = processes
    assert encode[encode.index("-m") + 1:encode.index("-m") + 3] == ["llm_dit.cli", "encode"]
    assert predict[-2] == "--model.embeddings" and predict[-1] == encode[encode.index("--out") + 1]
    assert ["--model.speed.fp8", "true"] == predict[predict.index("--model.speed.fp8"):][:2]
    assert "--cap-gib" in encode and "--cap-gib" in predict


def test_smoke_run_both_sides_write_the_same_images(tmp_path, monkeypatch):
    """The two sides as processes on tiny-random: every image of the study written, the same pixels
    (within one level of rounding), a ratio and memory figures in the results file."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes on shared cores: no spin-waiting threads
    report = bench.main(["--smoke", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                         "--caches", "warm", "--runs", "ours/study4/warm", "diffusers/study4/warm"])
    runs = report["runs"]
    for name in ("ours/study4/warm", "diffusers/study4/warm"):
        assert runs[name]["returncodes"] == [0], runs[name].get("error_tail")
        assert runs[name]["complete"] and runs[name]["images"] == 4
        assert 0 < runs[name]["first_image_s"] <= runs[name]["last_image_s"] <= runs[name]["end_to_end_s"]
        assert runs[name]["max_rss_gib"] > 0
    agreement = report["comparisons"]["study4/warm"]["images"]
    assert agreement["images_compared"] == 4 and agreement["max_abs_diff"] <= 2
    assert report["comparisons"]["study4/warm"]["end_to_end"] > 0
    saved = json.loads((tmp_path / "out" / "bench_study_cli_smoke.json").read_text())
    assert set(saved["runs"]) == {"ours/study4/warm", "diffusers/study4/warm"}
    assert all(t < 5 for t in saved["import_llm_dit_cli_s"])  # lazy: no torch behind `import llm_dit.cli`


@pytest.mark.parametrize("flag", ["-m", None])
def test_launcher_records_peaks_and_exit_code(tmp_path, flag):
    script = tmp_path / "job.py"
    script.write_text("import sys\nprint('ran', sys.argv[1:])\nsys.exit(3)\n")
    record = tmp_path / "record.json"
    target = ["-m", "job"] if flag else [str(script)]
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "measured_launch.py"), "--record", str(record),
                             *target, "a", "b"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 3 and "ran ['a', 'b']" in result.stdout
    data = json.loads(record.read_text())
    assert data["max_rss_gib"] > 0 and data["ended_unix"] >= data["started_unix"]


def test_launcher_leaves_the_targets_options_to_the_target(tmp_path):
    """`--help` or `-m` after the target belongs to the target, as with `python -m`."""
    record = tmp_path / "record.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "measured_launch.py"), "--record", str(record),
                             "-m", "json.tool", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and "json.tool" in result.stdout and record.is_file()


def test_print_commands_builds_and_runs_nothing(tmp_path, capsys):
    assert bench.main(["--print-commands", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
                       "--runs", "diffusers/study16/warm"]) == {}
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "# diffusers/study16/warm" and "diffusers_study_loop.py" in printed[1]
    assert "--compile dit+vae" in printed[1] and not (tmp_path / "work").exists() and not (tmp_path / "out").exists()
