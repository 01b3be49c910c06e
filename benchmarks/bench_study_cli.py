"""A whole study through `python -m llm_dit.cli predict` against a plain diffusers loop, process start to last file.

Issue 20's harness. Both sides run as a user runs them, each in its own process started from here,
on the same weights folder (full-size Z-Image-Turbo shapes, random bf16 weights, saved once as a
diffusers folder so that both load from disk), the same prompts, seeds, shifts and step counts:

  ours       python -m llm_dit.cli predict --config configs/shift_steps.yaml --model.weights W
             --model.speed.compile true --model.speed.attention_backend auto ... (its callbacks,
             TensorBoard review and figures included: what a researcher gets)
  diffusers  benchmarks/diffusers_study_loop.py: ZImagePipeline, compile_repeated_blocks(fullgraph=True)
             and the VAE compiled, one image per call, one PNG per image
  ours_16gib encode first, then predict from the saved features (the text encoder never shares the
             card with the DiT), under a 16 GiB cap on CUDA memory
  ours_12gib the same plus fp8 storage of the DiT's linears, under a 12 GiB cap

Each run is timed from just before its process starts: first and last image written (file mtimes),
process end, and throughput over images 5..N (steady state). Caches: "cold" empties the run's own
Inductor/Triton cache folders first, "warm" reuses what the cold run left. The memory figures come
from benchmarks/measured_launch.py (peak CUDA allocated/reserved; peak RSS on the CPU).

    python benchmarks/bench_study_cli.py --out $OUT                  # on the GPU machine (pieces: --runs)
    python benchmarks/bench_study_cli.py --smoke --out /tmp/bench    # CPU check on tiny-random, 64 px

Results accumulate in $OUT/bench_study_cli.json (a later call skips the runs it holds, unless
--again), so the study can be measured in several device calls of at most 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's llm_dit, installed or not (the GPU machine's is not)
LAUNCH = ROOT / "benchmarks" / "measured_launch.py"
DIFFUSERS_LOOP = ROOT / "benchmarks" / "diffusers_study_loop.py"
STUDY_CONFIG = ROOT / "configs" / "shift_steps.yaml"
STUDY_NAME = "shift_steps"
CONTROL = "shift=3.0,steps=8"
PROMPTS = (
    "An image of a plain big cyan cross in the top right against a white backdrop.",
    "A small red circle to the left of a large blue square against a black background.",
)
STEADY_FROM = 5
"""Steady-state throughput counts images STEADY_FROM..N: the first ones carry compilation."""


@dataclass(frozen=True)
class StudyShape:
    """A shift x steps grid over prompts and seeds; `images` of them."""

    name: str
    shifts: tuple[float, ...]
    steps: tuple[int, ...]
    seeds: tuple[int, ...]
    prompts: tuple[str, ...]
    size: int

    @property
    def images(self) -> int:
        return len(self.shifts) * len(self.steps) * len(self.seeds) * len(self.prompts)


STUDIES = {
    "study96": StudyShape("study96", (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0), (4, 8, 16), (0, 1), PROMPTS, 1024),
    "study16": StudyShape("study16", (2.0, 3.0), (4, 8), (0, 1), PROMPTS, 1024),
}
SMOKE_STUDIES = {
    "study4": StudyShape("study4", (2.0, 3.0), (8,), (0,), PROMPTS, 64),
}


@dataclass
class Setup:
    """What every run shares: where the weights are, the dtype, whether to compile, where runs go."""

    weights: Path
    work: Path
    dtype: str
    compile: bool
    batch_size: int


@dataclass
class RunSpec:
    """One timed run: a side, a study shape, a cache state, an optional memory cap."""

    side: str
    study: StudyShape
    cache: str
    cap_gib: float | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.side}/{self.study.name}/{self.cache}"


def variables_json(study: StudyShape) -> str:
    return json.dumps({"sampler.shift": list(study.shifts), "sampler.steps": list(study.steps)})


def ours_study_args(setup: Setup, study: StudyShape, prompts_file: Path, root_dir: Path) -> list[str]:
    """The predict/encode arguments that turn configs/shift_steps.yaml into `study` on `setup`'s weights."""
    return [
        "--config", str(STUDY_CONFIG),
        "--model.weights", str(setup.weights), "--model.dtype", setup.dtype,
        "--data.init_args.batch_size", str(setup.batch_size),
        "--data.init_args.study.prompts_file", str(prompts_file),
        "--data.init_args.study.seeds", json.dumps(list(study.seeds)),
        "--data.init_args.study.variables", variables_json(study),
        "--data.init_args.study.control", CONTROL,
        "--data.init_args.study.sampler.height", str(study.size),
        "--data.init_args.study.sampler.width", str(study.size),
        "--trainer.default_root_dir", str(root_dir),
    ]


def speed_args(setup: Setup) -> list[str]:
    if not setup.compile:
        return []
    return ["--model.speed.compile", "true", "--model.speed.attention_backend", "auto"]


def commands(spec: RunSpec, setup: Setup, run_dir: Path) -> tuple[list[list[str]], Path]:
    """The processes of a run, in order, and the folder its images land in."""
    python = sys.executable
    prompts_file = run_dir / "prompts.txt"
    launch = [python, str(LAUNCH)]
    cap = ["--cap-gib", str(spec.cap_gib)] if spec.cap_gib is not None else []
    if spec.side == "diffusers":
        images = run_dir / "images"
        loop = [str(DIFFUSERS_LOOP), "--weights", str(setup.weights), "--out", str(images),
                "--prompts-file", str(prompts_file), "--shifts", *map(str, spec.study.shifts),
                "--steps", *map(str, spec.study.steps), "--seeds", *map(str, spec.study.seeds),
                "--size", str(spec.study.size), "--dtype", setup.dtype,
                "--compile", "dit+vae" if setup.compile else "none"]
        return [launch + ["--record", str(run_dir / "memory_0.json"), *cap, *loop]], images
    study = ours_study_args(setup, spec.study, prompts_file, run_dir)
    images = run_dir / "lightning_logs" / STUDY_NAME / "images"
    predict = ["-m", "llm_dit.cli", "predict", *study, *speed_args(setup), *spec.extra]
    if spec.side == "ours":
        return [launch + ["--record", str(run_dir / "memory_0.json"), *cap, *predict]], images
    embeddings = run_dir / "embeddings"
    encode = ["-m", "llm_dit.cli", "encode", *study, "--out", str(embeddings)]
    return [launch + ["--record", str(run_dir / "memory_0.json"), *cap, *encode],
            launch + ["--record", str(run_dir / "memory_1.json"), *cap, *predict, "--model.embeddings", str(embeddings)]], images


def image_times(folder: Path, started: float) -> list[float]:
    """Seconds from `started` to each PNG's last write under `folder`, sorted."""
    return sorted(p.stat().st_mtime - started for p in folder.rglob("*.png")) if folder.is_dir() else []


def timing_summary(times: list[float], ended: float, expected: int) -> dict:
    """First/last image, process end, steady-state rate (images STEADY_FROM..N), in seconds and images/h."""
    summary: dict = {"images": len(times), "complete": len(times) == expected, "end_to_end_s": round(ended, 2)}
    if times:
        summary.update(first_image_s=round(times[0], 2), last_image_s=round(times[-1], 2),
                       after_last_image_s=round(ended - times[-1], 2))
    if len(times) > STEADY_FROM:
        span = times[-1] - times[STEADY_FROM - 1]
        if span > 0:
            summary["steady_images_per_h"] = round((len(times) - STEADY_FROM) * 3600 / span, 1)
    return summary


def cache_env(cache_dir: Path) -> dict[str, str]:
    """Environment that points every compile cache at `cache_dir` (cold = a fresh folder)."""
    return {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache_dir / "inductor"), "TRITON_CACHE_DIR": str(cache_dir / "triton")}


def run_one(spec: RunSpec, setup: Setup) -> dict:
    """Run `spec`'s processes one after another and return its timings and memory peaks."""
    run_dir = setup.work / spec.name.replace("/", "_")
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "prompts.txt").write_text("\n".join(spec.study.prompts) + "\n")
    # one cache folder per program: the low-memory runs are llm-dit too, so "warm" means warm for them
    # (fp8's graphs excepted: they are compiled first by ours_12gib)
    cache_dir = setup.work / "cache" / ("diffusers" if spec.side == "diffusers" else "ours")
    if spec.cache == "cold" and cache_dir.exists():
        shutil.rmtree(cache_dir)
    env = cache_env(cache_dir)
    processes, images = commands(spec, setup, run_dir)
    log = run_dir / "log.txt"
    started = time.time()
    returncodes = []
    with log.open("w") as out:
        for command in processes:
            out.write("$ " + " ".join(command) + "\n")
            out.flush()
            returncodes.append(subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode)
            if returncodes[-1] != 0:
                break
    ended = time.time() - started
    result = {"side": spec.side, "study": spec.study.name, "cache": spec.cache, "cap_gib": spec.cap_gib,
              "returncodes": returncodes, "log": str(log), "image_dir": str(images),
              **timing_summary(image_times(images, started), ended, spec.study.images)}
    memory = [json.loads(p.read_text()) for p in sorted(run_dir.glob("memory_*.json"))]
    for key in ("cuda_max_allocated_gib", "cuda_max_reserved_gib", "max_rss_gib"):
        values = [m[key] for m in memory if key in m]
        if values:
            result[key] = max(values)
    if any(code != 0 for code in returncodes):
        result["error_tail"] = log.read_text()[-2000:]
    return result


def import_seconds(repeat: int = 3) -> list[float]:
    """Wall time of `python -c "import llm_dit.cli"` (lazy imports: no torch, Lightning, diffusers)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import llm_dit.cli"], cwd=ROOT, check=True)
        times.append(round(time.perf_counter() - started, 3))
    return times


def prepare_weights(folder: Path, smoke: bool) -> dict:
    """The shared weights folder: tiny-random (smoke) or full-size random bf16 built on the GPU, saved once."""
    if (folder / "model_index.json").is_file():
        return {"weights": str(folder), "built": False}
    import torch

    from llm_dit.models.random_full import build_random_components
    from llm_dit.models.saving import save_diffusers_folder
    from llm_dit.models.tiny import build_tiny_components

    started = time.perf_counter()
    components = build_tiny_components(seed=0) if smoke else build_random_components(seed=0, dtype=torch.bfloat16)
    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    save_diffusers_folder(components, partial)
    partial.rename(folder)
    del components
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the runs are other processes: leave them the whole card
    return {"weights": str(folder), "built": True, "build_and_save_s": round(time.perf_counter() - started, 1)}


def planned_runs(studies: dict[str, StudyShape], caches: list[str], smoke: bool) -> list[RunSpec]:
    """Both sides per study and cache state (ours first, then diffusers, so cold means cold for
    each), then the two low-memory settings on the largest study with warm caches."""
    runs = [RunSpec(side, study, cache) for study in studies.values() for cache in caches for side in ("ours", "diffusers")]
    largest = max(studies.values(), key=lambda s: s.images)
    runs.append(RunSpec("ours_16gib", largest, "warm", cap_gib=None if smoke else 16.0))
    runs.append(RunSpec("ours_12gib", largest, "warm", cap_gib=None if smoke else 12.0, extra=["--model.speed.fp8", "true"]))
    return runs


def image_agreement(ours: Path, theirs: Path) -> dict:
    """How far apart the two sides' images are, pixel by pixel over the images both wrote (0-255 scale).

    Both sides name an image `shift=<s>,steps=<n>/p<prompt>_s<seed>.png`, so a speed ratio is only
    reported next to proof that the two computed the same study."""
    import numpy as np
    from PIL import Image

    worst, total, pixels, compared = 0, 0.0, 0, 0
    for path in sorted(ours.rglob("*.png")):
        other = theirs / path.relative_to(ours)
        if not other.is_file():
            continue
        a = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
        b = np.asarray(Image.open(other).convert("RGB"), dtype=np.int16)
        difference = np.abs(a - b)
        worst, total, pixels, compared = max(worst, int(difference.max())), total + float(difference.sum()), pixels + difference.size, compared + 1
    return {"images_compared": compared, "max_abs_diff": worst, "mean_abs_diff": round(total / pixels, 6) if pixels else None}


def comparisons(results: dict[str, dict]) -> dict[str, dict]:
    """llm-dit over diffusers per study and cache: end to end and steady state (> 1 means llm-dit is
    faster), with how closely their images agree."""
    ratios = {}
    for name, ours in results.items():
        if not name.startswith("ours/"):
            continue
        theirs = results.get(name.replace("ours/", "diffusers/", 1))
        if not theirs or not ours.get("complete") or not theirs.get("complete"):
            continue
        entry = {"end_to_end": round(theirs["end_to_end_s"] / ours["end_to_end_s"], 3)}
        if ours.get("steady_images_per_h") and theirs.get("steady_images_per_h"):
            entry["steady_state"] = round(ours["steady_images_per_h"] / theirs["steady_images_per_h"], 3)
        if ours.get("image_dir") and theirs.get("image_dir"):
            entry["images"] = image_agreement(Path(ours["image_dir"]), Path(theirs["image_dir"]))
        ratios[name.split("/", 1)[1]] = entry
    return ratios


def table(report: dict) -> str:
    """Markdown: one row per run, then the llm-dit/diffusers ratios."""
    lines = ["| run | images | first image s | last image s | after last s | end to end s | steady img/h | "
             "peak alloc GiB | peak reserved GiB | peak RSS GiB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in report["runs"].items():
        cells = [r.get(k, "—") for k in ("first_image_s", "last_image_s", "after_last_image_s", "end_to_end_s",
                                         "steady_images_per_h", "cuda_max_allocated_gib", "cuda_max_reserved_gib",
                                         "max_rss_gib")]
        images = f"skipped ({r['skipped']})" if "skipped" in r else f"{r.get('images')}{'' if r.get('complete') else ' (incomplete)'}"
        lines.append(f"| {name} | {images} | "
                     + " | ".join(map(str, cells)) + " |")
    for study_cache, ratio in report.get("comparisons", {}).items():
        images = ratio.get("images") or {}
        lines.append(f"\nllm-dit / diffusers, {study_cache}: end to end {ratio['end_to_end']}x"
                     + (f", steady state {ratio['steady_state']}x" if "steady_state" in ratio else "")
                     + (f"; {images['images_compared']} image pairs differ by at most {images['max_abs_diff']}/255"
                        f" (mean {images['mean_abs_diff']})" if images else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "benchmarks" / "results")))
    parser.add_argument("--work", type=Path, default=None, help="run folders and caches (default: /tmp/bench_study_cli)")
    parser.add_argument("--weights", type=Path, default=None, help="a diffusers folder; built here when missing")
    parser.add_argument("--smoke", action="store_true", help="CPU check: tiny-random weights, 64 px, no compile")
    parser.add_argument("--runs", nargs="*", default=None, help="run only these (names like ours/study16/cold)")
    parser.add_argument("--caches", nargs="+", default=["cold", "warm"], choices=["cold", "warm"])
    parser.add_argument("--budget", type=float, default=None, help="seconds: start no run after this much time")
    parser.add_argument("--again", action="store_true", help="re-run runs the results file already holds")
    parser.add_argument("--print-commands", action="store_true",
                        help="print each run's command lines (to run a side by hand) and exit: nothing is built or run")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    studies = SMOKE_STUDIES if args.smoke else STUDIES
    work = args.work or Path("/tmp/bench_study_cli" + ("_smoke" if args.smoke else ""))
    weights = args.weights or work / ("tiny-random" if args.smoke else "random-z-image-turbo")
    setup = Setup(weights=weights, work=work, dtype="float32" if args.smoke else "bfloat16",
                  compile=not args.smoke, batch_size=4)
    if args.print_commands:
        for spec in planned_runs(studies, args.caches, args.smoke):
            if args.runs is None or spec.name in args.runs:
                processes, _ = commands(spec, setup, work / spec.name.replace("/", "_"))
                print(f"# {spec.name}\n" + "\n".join(" ".join(shlex.quote(part) for part in command) for command in processes))
        return {}
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / ("bench_study_cli_smoke.json" if args.smoke else "bench_study_cli.json")
    report = json.loads(results_path.read_text()) if results_path.is_file() else {"runs": {}}
    report["weights"] = prepare_weights(weights, args.smoke)
    import torch  # after the weights: a fresh machine pays torch's import once, inside the build

    cuda = torch.cuda.is_available()
    report["machine"] = {"python": platform.python_version(), "torch": torch.__version__,
                         "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"}
    report.setdefault("import_llm_dit_cli_s", import_seconds())
    for spec in planned_runs(studies, args.caches, args.smoke):
        if args.runs is not None and spec.name not in args.runs:
            continue
        done = spec.name in report["runs"] and "skipped" not in report["runs"][spec.name]
        if done and not args.again:
            continue
        if args.budget is not None and time.perf_counter() - started > args.budget:
            report["runs"][spec.name] = {"skipped": "budget"}  # a later call runs it
            continue
        print(f"[bench_study_cli] {spec.name} ...", file=sys.stderr, flush=True)
        report["runs"][spec.name] = run_one(spec, setup)
        results_path.write_text(json.dumps(report, indent=1) + "\n")  # after every run: nothing lost to a timeout
    report["comparisons"] = comparisons(report["runs"])  # pairs of complete runs only; skipped ones have no "complete"
    results_path.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))
    print(f"results: {results_path}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
