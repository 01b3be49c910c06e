"""Score a world model the way issue 18 states its bar: held-out combinations, 8 steps, shift 3.

    python -m llm_dit.world_model.evaluate lightning_logs/world_model/export --count 200
    python -m llm_dit.world_model.evaluate llm_dit/models/embedded/tiny --split train --steps 1

`--split train` scores the same kinds of prompt on combinations the model was trained on, so the
gap between the two splits says whether it composes attributes or memorises pairs; `--steps`
changes the sampler's step count (the bar is at 8).

Generates images through the toolkit's own path (ZImageTextEncoder, the Euler loop,
VAE decode) for scenes of the held-out split, captioned in the `plain` form, and scores
them with the world evaluator: image-level "all facts hold" per prompt type, with a
95 % Wilson interval (one image per prompt: the unit is the prompt).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from llm_dit.encoding.encoder import ZImageTextEncoder
from llm_dit.models.components import ZImageComponents
from llm_dit.models.loading import load_diffusers_folder
from llm_dit.sampling.euler import decode_latents, denoise, initial_noise, vae_scale_factor
from llm_dit.sampling.schedule import make_scheduler
from llm_dit.world.captions import caption
from llm_dit.world.scene import Scene, sample_scene
from llm_dit.world.score import SceneScore, score_image, summary

EVAL_SEED = 4242


def bar_prompts(kind: str, count: int, seed: int = EVAL_SEED, split: str = "heldout") -> list[tuple[Scene, str]]:
    """The prompts of issue 18's bar. `one_object`: one held-out object; `colour_binding`: two objects
    of different colours and shapes, at least one a held-out combination. Plain-form captions (every
    attribute stated). `split="train"`: the same kinds of scene, with only trained combinations (the
    memorisation-vs-composition contrast)."""
    rng = np.random.default_rng([seed, 0 if kind == "one_object" else 1])
    pairs = []
    while len(pairs) < count:
        scene = sample_scene(rng, split=split, n_objects=1 if kind == "one_object" else 2)
        if kind == "colour_binding":
            a, b = scene.objects
            if a.colour == b.colour or a.shape == b.shape:
                continue
        pairs.append((scene, caption(scene, rng, form="plain")))
    return pairs


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))  # rounding can step past 0 or 1


@torch.no_grad()
def generate(components: ZImageComponents, prompts: list[str], seeds: list[int], size: int = 64, steps: int = 8,
             shift: float = 3.0, batch_size: int = 50) -> np.ndarray:
    """uint8 [N, size, size, 3] images, guidance 0 (Turbo's setting)."""
    encoder = ZImageTextEncoder(components.text_encoder, components.tokenizer, padding="none")
    device = components.transformer.device
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk, chunk_seeds = prompts[start:start + batch_size], seeds[start:start + batch_size]
        features = [e.embeddings.to(device, components.transformer.dtype) for e in encoder.encode(chunk)]
        latents = initial_noise(chunk_seeds, size, size, vae_scale_factor=vae_scale_factor(components.vae)).to(device)
        scheduler = make_scheduler(components.scheduler, steps, shift, device)
        latents = denoise(components.transformer, scheduler, latents, features)
        pixels = decode_latents(components.vae, latents)
        images.append((pixels.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8))
    return np.concatenate(images)


def bar_scores(components: ZImageComponents, kind: str, count: int, size: int = 64, split: str = "heldout",
               steps: int = 8) -> tuple[list[str], list[SceneScore]]:
    """The `count` prompts of `kind` (held-out split unless told), each generated once (seed = its index) and scored."""
    prompts = [p for _, p in bar_prompts(kind, count, split=split)]
    images = generate(components, prompts, list(range(count)), size, steps)
    return prompts, [score_image(image, prompt) for image, prompt in zip(images, prompts)]


def evaluate(components: ZImageComponents, count: int = 200, size: int = 64, split: str = "heldout",
             steps: int = 8) -> dict[str, dict[str, float]]:
    results = {}
    for kind in ("one_object", "colour_binding"):
        start = time.perf_counter()
        _, scores = bar_scores(components, kind, count, size, split, steps)
        correct = sum(score.all_hold for score in scores)
        low, high = wilson(correct, count)
        results[kind] = {"accuracy": correct / count, "wilson_low": low, "wilson_high": high, "n": count,
                         "seconds": time.perf_counter() - start, "facts_by_kind": summary(scores)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="a diffusers-format folder (the training export or the embedded model)")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--split", choices=("heldout", "train"), default="heldout",
                        help="held-out combinations (the bar) or trained ones (memorisation vs composition)")
    parser.add_argument("--steps", type=int, default=8, help="sampler steps (the bar: 8)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    components = load_diffusers_folder(args.weights, dtype=torch.float32)
    for module in components.modules().values():
        module.to(args.device)
    print(json.dumps(evaluate(components, args.count, args.size, args.split, args.steps), indent=2))


if __name__ == "__main__":
    main()
