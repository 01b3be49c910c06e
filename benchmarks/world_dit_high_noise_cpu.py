"""Does training at the first sampling step's noise level teach the DiT the caption's background? (CPU)

    python benchmarks/world_dit_high_noise_cpu.py OUTPUT_DIR --steps 300 --fractions 0,0.1

OUTPUT_DIR holds `export/` (the trained VAE, encoder and transformer to start from). Each arm
fine-tunes the exported transformer for `--steps` steps from the same start, with the same batch
indices and noise (their own seeded generator), differing in the DiT stage's `high_noise_fraction`
(the noise levels and the caption-dropout draws come from torch's global generator, which the band's
extra draws move, so those are not shared between arms); then it reports how much
the velocity at sigma = 1 moves when one attribute word of a fixed prompt is swapped (the caption's
pull on that attribute) and the held-out evaluation on `--eval` one-object prompts. Written in the
fourth session, when the DiT ignored "white" / "black" although the encoder separated them
(benchmarks/NOTES.md); a probe on few steps, not a training recipe.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import ZImageTransformer2DModel
from torch.nn import functional as F

from llm_dit.encoding.encoder import ZImageTextEncoder
from llm_dit.models.loading import load_diffusers_folder
from llm_dit.training.objective import noisy_latents, velocity_target
from llm_dit.world.score import summary
from llm_dit.world_model.batched import batched_forward
from llm_dit.world_model.config import StageSettings, WorldTrainingConfig
from llm_dit.world_model.evaluate import bar_scores
from llm_dit.world_model.stages import DitStage
from llm_dit.world_model.train import caption_batch, dit_tensors

BASE = "A big red striped circle in the upper left on a white background."
SWAPS = {"size": ("big", "small"), "colour": ("red", "blue"), "style": ("striped", "dotted"),
         "shape": ("circle", "square"), "position": ("upper left", "lower right"), "background": ("white", "black")}


@torch.no_grad()
def caption_pull(components) -> dict[str, float]:
    """Per attribute: ||v(swapped) - v(base)|| / ||v(base)|| at sigma = 1 (mean over 4 noise draws)."""
    encoder = ZImageTextEncoder(components.text_encoder, components.tokenizer, padding="none")
    prompts = [BASE] + [BASE.replace(a, b) for a, b in SWAPS.values()]
    features = [e.embeddings.float() for e in encoder.encode(prompts)]
    pulls = {kind: 0.0 for kind in SWAPS}
    for seed in range(4):
        noise = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(seed))
        outs = [components.transformer([noise[0].unsqueeze(1)], torch.zeros(1), [f], return_dict=False)[0][0] for f in features]
        for i, kind in enumerate(SWAPS):
            pulls[kind] += float((outs[i + 1] - outs[0]).norm() / outs[0].norm()) / 4
    return {k: round(v, 4) for k, v in pulls.items()}


def evaluate_one_object(components, count: int) -> dict:
    facts = summary(bar_scores(components, "one_object", count)[1])
    return {kind: facts[kind]["accuracy"] for kind in ("all_hold", "presence", "colour", "size", "style", "background")}


def fine_tune(start: dict[str, torch.Tensor], data: dict[str, torch.Tensor], fraction: float, steps: int, batch: int,
              lr: float) -> tuple[ZImageTransformer2DModel, float]:
    torch.manual_seed(0)
    stage = DitStage(StageSettings(max_steps=steps, batch_size=batch, learning_rate=lr), compile=False,
                     frozen_timestep_embedder=True, high_noise_fraction=fraction)
    model = stage.transformer
    model.load_state_dict(start)
    model.rope_embedder(torch.zeros(1, 3, dtype=torch.long))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(1)
    begin = time.perf_counter()
    for _ in range(steps):
        index = torch.randint(0, len(data["latents"]), (batch,), generator=generator)
        which = index * 2 + torch.randint(0, 2, (batch,), generator=generator)
        feats, lens = caption_batch(data, which, 0.1)
        x0 = data["latents"][index].float()
        noise = torch.randn(x0.shape, generator=generator)
        sigma = stage.sample_sigmas(batch, "cpu")
        prediction = batched_forward(model, noisy_latents(x0, noise, sigma), 1 - sigma, feats.float(), lens, cap_len_max=feats.shape[1])
        loss = F.mse_loss(prediction, velocity_target(x0, noise))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
    return model, time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--fractions", default="0,0.1")
    parser.add_argument("--train_scenes", type=int, default=10_000)
    parser.add_argument("--eval", type=int, default=100)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    data = dit_tensors(WorldTrainingConfig(train_scenes=args.train_scenes), args.output_dir, "cpu")
    components = load_diffusers_folder(str(args.output_dir / "export"), dtype=torch.float32)
    start = {k: v.clone() for k, v in components.transformer.state_dict().items()}
    results = {"start": {"caption_pull": caption_pull(components), "eval": evaluate_one_object(components, args.eval)}}
    print("start", json.dumps(results["start"]), flush=True)
    for fraction in [float(f) for f in args.fractions.split(",")]:
        model, seconds = fine_tune(start, data, fraction, args.steps, args.batch, args.lr)
        components.transformer = model.eval()
        name = f"high_noise_{fraction}"
        results[name] = {"seconds": round(seconds, 1), "caption_pull": caption_pull(components),
                         "eval": evaluate_one_object(components, args.eval)}
        print(name, json.dumps(results[name]), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results}, indent=1))


if __name__ == "__main__":
    main()
