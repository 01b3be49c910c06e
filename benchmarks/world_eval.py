"""Validate the synthetic world's evaluator: accuracy, degradation, chance level, speed.

    python benchmarks/world_eval.py                     # 10,000 scenes per size (minutes on one core)
    python benchmarks/world_eval.py --scenes 500        # quick look
    python benchmarks/world_eval.py --tiny-run lightning_logs/world_chance   # + chance on a tiny-model run

Writes benchmarks/results/world_eval.json and benchmarks/results/world_degradation.png
and prints the Markdown table for benchmarks/NOTES.md ("Synthetic world").

What is measured:

* detection: each drawn object's attributes against the detector's (objects
  matched by grid cell), object count, background;
* facts: the evaluator's verdict on every fact of two prompts per image --
  the full fact list of its own scene (``scene_facts``: all true) and a
  caption of another scene in a rotating form (true and false facts) --
  against the verdict on the drawn scene itself (the ground truth);
* degradation: the same fact accuracy after Gaussian blur, Gaussian noise
  and a hue rotation of +-x % of the colour circle (half the images each way);
* chance: the share of facts that hold when an image is scored against the
  caption of a random other scene (what an image unrelated to its prompt scores),
  and, given ``--tiny-run``, the images of a study run rescored (mean per item);
* speed: process CPU time (one thread) per image for ``detect`` + scoring.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from llm_dit.world.captions import FORMS, caption  # noqa: E402
from llm_dit.world.detection import detect  # noqa: E402
from llm_dit.world.render import render_batch  # noqa: E402
from llm_dit.world.scene import sample_scene  # noqa: E402
from llm_dit.world.parse import expected_facts  # noqa: E402
from llm_dit.world.score import FACT_KINDS, check_facts, scene_facts, score_scene  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BLUR = (0.0, 0.5, 1.0, 1.5, 2.0)  # Gaussian sigma, px at 64 px
NOISE = (0.0, 5.0, 10.0, 20.0, 30.0)  # Gaussian sigma on 0..255
HUE = (0.0, 2.5, 5.0, 7.5, 10.0)  # +- % of the hue circle (10 % = 36 degrees)


def scenes_and_prompts(n: int, seed: int) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, repeat=0) for _ in range(n)]
    prompts = [caption(scenes[(i + 1 + int(rng.integers(n - 1))) % n], rng, FORMS[i % len(FORMS)]) for i in range(n)]
    return scenes, prompts


def fact_agreement(images: np.ndarray, scenes: list, prompts: list) -> dict:
    """Per kind: share of facts judged as on the drawn scene; all-hold rate on own facts; detection errors."""
    agree, total = defaultdict(int), defaultdict(int)
    own_all, detection_errors, attributes = 0, defaultdict(int), 0
    for image, scene, prompt in zip(images, scenes, prompts):
        found = detect(image)
        own = check_facts(scene_facts(scene), found.objects, found.background)
        own_all += all(r.holds for r in own)
        for r in own:
            agree[r.kind] += r.holds
            total[r.kind] += 1
        truth = score_scene(scene, prompt).results
        verdicts = check_facts(expected_facts(prompt), found.objects, found.background)
        for t, v in zip(truth, verdicts):
            agree[t.kind] += t.holds == v.holds
            total[t.kind] += 1
        detection_errors["count"] += len(found.objects) != len(scene.objects)
        detection_errors["background"] += found.background != scene.background
        cells = {(o.row, o.col): o for o in found.objects}
        for obj in scene.objects:
            det = cells.get((obj.row, obj.col))
            attributes += 1
            for name in ("shape", "colour", "size", "style"):
                detection_errors[name] += det is None or getattr(det, name) != getattr(obj, name)
            detection_errors["position"] += det is None
    n = len(scenes)
    out = {kind: agree[kind] / total[kind] for kind in FACT_KINDS if total[kind]}
    out["facts"] = sum(agree.values()) / sum(total.values())
    out["all_hold_own"] = own_all / n
    out["n_facts"] = sum(total.values())
    out["detection_accuracy"] = {
        k: 1 - detection_errors[k] / (n if k in ("count", "background") else attributes)
        for k in ("count", "background", "shape", "colour", "size", "style", "position")
    }
    return out


def chance(scenes: list, prompts: list) -> dict:
    """Share of facts holding when a scene is scored against another scene's caption."""
    held, total, all_hold = defaultdict(int), defaultdict(int), 0
    for scene, prompt in zip(scenes, prompts):
        results = score_scene(scene, prompt).results
        all_hold += all(r.holds for r in results)
        for r in results:
            held[r.kind] += r.holds
            total[r.kind] += 1
    out = {kind: held[kind] / total[kind] for kind in FACT_KINDS if total[kind]}
    out["facts"] = sum(held.values()) / sum(total.values())
    out["all_hold"] = all_hold / len(scenes)
    return out


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    if sigma == 0:
        return images
    return np.clip(ndimage.gaussian_filter(images.astype(np.float32), (0, sigma, sigma, 0)) + 0.5, 0, 255).astype(np.uint8)


def noise(images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    if sigma == 0:
        return images
    noisy = images + np.random.default_rng(seed).normal(0, sigma, images.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def hue_shift(images: np.ndarray, percent: float) -> np.ndarray:
    """Rotate the hue by +percent % of the circle on even images, -percent % on odd ones."""
    if percent == 0:
        return images
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    hsv = rgb_to_hsv(images.astype(np.float32) / 255)
    signs = np.where(np.arange(len(images)) % 2 == 0, 1.0, -1.0)[:, None, None]
    hsv[..., 0] = np.mod(hsv[..., 0] + signs * percent / 100, 1.0)
    return np.clip(np.round(hsv_to_rgb(hsv) * 255), 0, 255).astype(np.uint8)


def speed(images: np.ndarray, prompts: list) -> float:
    start = time.process_time()
    for image, prompt in zip(images, prompts):
        found = detect(image)
        check_facts(expected_facts(prompt), found.objects, found.background)
    return len(images) / (time.process_time() - start)


def tiny_run_means(run: Path) -> dict:
    """Rescore a study run's images against their original prompts (world prompts only)."""
    from PIL import Image

    from llm_dit.world.score import score_image

    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines() if line.strip()]
    scores = []
    for row in rows:
        if expected_facts(row["original_prompt"]).empty:
            continue
        image = np.asarray(Image.open(run / row["image"]).convert("RGB"))
        scores.append(score_image(image, row["original_prompt"]))
    out: dict = {"images": len(scores), "objects_detected_per_image": float(np.mean([len(s.detections.objects) for s in scores]))}
    out["all"] = float(np.mean([bool(s.all_hold) for s in scores]))
    out["facts"] = float(np.mean([s.fraction for s in scores]))
    for kind in FACT_KINDS:
        values = [v for s in scores if (v := s.by_kind()[kind]) is not None]
        out[kind] = float(np.mean(values)) if values else None
    return out


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for ax, (name, (levels, label)) in zip(axes, {"blur": (BLUR, "Gaussian blur sigma (px at 64 px)"), "noise": (NOISE, "noise sigma (0..255)"), "hue": (HUE, "hue rotation +- % of circle")}.items()):
        for kind in (*FACT_KINDS, "facts", "all_hold_own"):
            ys = [curves[name][str(level)].get(kind) for level in levels]
            style = "k-" if kind in ("facts", "all_hold_own") else "-"
            ax.plot(levels, ys, style if kind != "all_hold_own" else "k--", marker="o", ms=3, label=kind)
        ax.set_xlabel(label)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of facts judged correctly")
    axes[-1].legend(fontsize=7, loc="lower left")
    fig.suptitle("World evaluator under degradation (64 px, per fact kind; dashed: images with every own fact held)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=10_000)
    parser.add_argument("--degradation-scenes", type=int, default=1000)
    parser.add_argument("--tiny-run", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"scenes": args.scenes, "degradation_scenes": args.degradation_scenes}

    scenes, prompts = scenes_and_prompts(args.scenes, seed=17)
    report["chance_other_scene_caption"] = chance(scenes, prompts)
    for size in (64, 128):
        images = render_batch(scenes, size, seed=size)
        report[f"accuracy_{size}px"] = fact_agreement(images, scenes, prompts)
        report[f"speed_{size}px_images_per_cpu_second"] = speed(images[:1000], prompts[:1000])
        print(size, json.dumps(report[f"accuracy_{size}px"]), flush=True)
    start = time.process_time()
    rendered = render_batch(scenes[:2000], 64, seed=1)
    report["render_64px_images_per_cpu_second"] = len(rendered) / (time.process_time() - start)

    d_scenes, d_prompts = scenes[: args.degradation_scenes], prompts[: args.degradation_scenes]
    clean = render_batch(d_scenes, 64, seed=99)
    curves: dict = {"blur": {}, "noise": {}, "hue": {}}
    for sigma in BLUR:
        curves["blur"][str(sigma)] = fact_agreement(blur(clean, sigma), d_scenes, d_prompts)
    for sigma in NOISE:
        curves["noise"][str(sigma)] = fact_agreement(noise(clean, sigma), d_scenes, d_prompts)
    for percent in HUE:
        curves["hue"][str(percent)] = fact_agreement(hue_shift(clean, percent), d_scenes, d_prompts)
    report["degradation_64px"] = curves
    plot(curves, args.out / "world_degradation.png")
    if args.tiny_run is not None:
        report["tiny_run"] = {"run": str(args.tiny_run), **tiny_run_means(args.tiny_run)}

    (args.out / "world_eval.json").write_text(json.dumps(report, indent=1))
    print(markdown(report))


def markdown(report: dict) -> str:
    kinds = [*FACT_KINDS, "facts"]
    lines = ["| | " + " | ".join(kinds) + " | all own facts |", "|---" * (len(kinds) + 2) + "|"]
    for size in (64, 128):
        acc = report[f"accuracy_{size}px"]
        lines.append(f"| {size} px | " + " | ".join(f"{100 * acc[k]:.2f}" for k in kinds) + f" | {100 * acc['all_hold_own']:.2f} |")
    ch = report["chance_other_scene_caption"]
    lines.append("| chance (other scene's caption) | " + " | ".join(f"{100 * ch[k]:.1f}" if k in ch else "" for k in kinds) + f" | {100 * ch['all_hold']:.1f} |")
    for name, levels in (("blur", BLUR), ("noise", NOISE), ("hue", HUE)):
        for level in levels[1:]:
            acc = report["degradation_64px"][name][str(level)]
            lines.append(f"| {name} {level} | " + " | ".join(f"{100 * acc[k]:.1f}" for k in kinds) + f" | {100 * acc['all_hold_own']:.1f} |")
    if "tiny_run" in report:
        t = report["tiny_run"]
        lines.append(f"| tiny model ({t['images']} images), mean per item | " + " | ".join("" if t.get(k if k != "facts" else "facts") is None else f"{100 * t[k]:.1f}" for k in kinds) + f" | {100 * t['all']:.1f} |")
    lines.append("")
    lines.append(
        f"Speed (process CPU time, one thread): detect + score {report['speed_64px_images_per_cpu_second']:.0f} images/s at 64 px, "
        f"{report['speed_128px_images_per_cpu_second']:.0f} at 128 px; render {report['render_64px_images_per_cpu_second']:.0f} images/s at 64 px."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
