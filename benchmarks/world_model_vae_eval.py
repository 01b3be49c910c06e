"""How much of a scene survives the world model's VAE round trip (issue 18's first bar).

    python benchmarks/world_model_vae_eval.py lightning_logs/world_model/export/vae --count 500

Renders held-out scenes, encodes and decodes them, and scores both the drawn and the
reconstructed images against the drawn scene's facts with the world evaluator.
"""

from __future__ import annotations

import argparse
import collections

import numpy as np
import torch
from diffusers import AutoencoderKL

from llm_dit.world.render import render_batch
from llm_dit.world.scene import sample_scene
from llm_dit.world.score import scene_facts, score_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vae", help="folder of the VAE (config.json + safetensors)")
    parser.add_argument("--count", type=int, default=500)
    args = parser.parse_args()
    vae = AutoencoderKL.from_pretrained(args.vae, torch_dtype=torch.float32).eval()
    rng = np.random.default_rng([0, 99])
    scenes = [sample_scene(rng, split="heldout") for _ in range(args.count)]
    images = render_batch(scenes, 64, seed=np.random.default_rng([0, 98]))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        y = torch.cat([vae.decode(vae.encode(x[i:i + 100]).latent_dist.mode()).sample for i in range(0, len(x), 100)])
    reconstructions = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    mse = ((reconstructions.astype(float) - images) ** 2).mean(axis=(1, 2, 3))
    print(f"PSNR {np.mean(10 * np.log10(255**2 / mse)):.2f} dB over {args.count} held-out scenes")
    for name, batch in (("drawn", images), ("reconstructed", reconstructions)):
        scores = [score_image(image, scene_facts(scene)) for image, scene in zip(batch, scenes)]
        kinds = collections.defaultdict(list)
        for score in scores:
            for result in score.results:
                kinds[result.kind].append(result.holds)
        facts = np.mean([r.holds for s in scores for r in s.results])
        print(f"{name}: every fact {np.mean([s.all_hold for s in scores]):.3f}, facts {facts:.4f}, "
              + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in kinds.items()))


if __name__ == "__main__":
    main()
