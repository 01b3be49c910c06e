"""DiT training probes on the world data: which start and optimiser settings learn stably (GPU).

    python benchmarks/world_dit_probe.py lightning_logs/world_model --steps 1200 --variants a,b --out probe.json

Each variant trains a fresh DiT for `--steps` steps (batch 256, linear warm-up) on the exported
VAE's latents and encoder's features, with the stage's caption choice and 10 % caption dropout,
in a plain PyTorch loop, and reports its loss (and gradient norm) every 100 steps, so a late
blow-up shows. `benchmarks/world_probe_then_train.sh` runs one process per variant side by side
on the one GPU (the model is far too small to fill it). Written after the second session's
Lightning runs diverged after ~250 steps (benchmarks/NOTES.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from llm_dit.training.objective import noisy_latents, shift_sigmas, velocity_target
from llm_dit.world_model.batched import batched_forward
from llm_dit.world_model.config import StageSettings, WorldTrainingConfig
from llm_dit.world_model.stages import DitStage
from llm_dit.world_model.train import caption_batch, dit_tensors

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
VARIANTS = {
    # The Lightning stage's settings before the third session (diverged after ~250 steps there).
    "dropout_5e-4": dict(lr=5e-4),
    "dropout_2e-4_b95": dict(lr=2e-4, beta2=0.95),
    # DiT's adaLN-Zero start (identity blocks, zero output).
    "zero_5e-4_b95": dict(lr=5e-4, beta2=0.95, init="adaln_zero"),
    "zero_2e-4_b95": dict(lr=2e-4, beta2=0.95, init="adaln_zero"),
    "zero_5e-4": dict(lr=5e-4, init="adaln_zero"),
    "dropout_2e-4_b95_clip05": dict(lr=2e-4, beta2=0.95, clip=0.5),
    # Third session: the timestep embedding's magnitude ran away (~600x in 2,000 steps).
    "frozen_t_3e-4_b95": dict(lr=3e-4, beta2=0.95, frozen_t=True),
    "frozen_t_5e-4_b95": dict(lr=5e-4, beta2=0.95, frozen_t=True),
    "wd01_3e-4_b95": dict(lr=3e-4, beta2=0.95, weight_decay=0.1),
}


def stage_flags(name: str) -> str:
    """train.py options that give the Lightning stage a variant's settings."""
    v = VARIANTS[name]
    return (f"--recipe.dit.learning_rate {v['lr']} --recipe.dit.beta2 {v.get('beta2', 0.99)} "
            f"--recipe.dit.gradient_clip {v.get('clip', 1.0)} --recipe.dit_init {v.get('init', 'diffusers')} "
            f"--recipe.dit.weight_decay {v.get('weight_decay', 0.0)} "
            f"--recipe.dit_frozen_timestep_embedder {str(v.get('frozen_t', False)).lower()}")


def probe(data, lr: float, steps: int, batch: int = 256, dropout: float = 0.1, beta2: float = 0.99,
          clip: float = 1.0, init: str = "diffusers", warmup: int = 200, weight_decay: float = 0.0,
          frozen_t: bool = False) -> dict:
    latents = data["latents"]
    torch.manual_seed(0)
    stage = DitStage(StageSettings(max_steps=steps, batch_size=batch, learning_rate=lr), compile=False, init=init,
                     frozen_timestep_embedder=frozen_t).to(DEVICE)
    model = stage.transformer
    model.rope_embedder(torch.zeros(1, 3, dtype=torch.long, device=DEVICE))
    forward = torch.compile(batched_forward, dynamic=False) if DEVICE == "cuda" else batched_forward
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, beta2), weight_decay=weight_decay)
    losses, norms, start = [], [], time.perf_counter()
    for step in range(steps):
        index = torch.randint(0, len(latents), (batch,), device=DEVICE)
        which = index * 2 + torch.randint(0, 2, (batch,), device=DEVICE)
        feats, lens = caption_batch(data, which, dropout or None)
        x0 = latents[index]
        noise = torch.randn_like(x0)
        sigma = shift_sigmas(torch.sigmoid(torch.randn(batch, device=DEVICE)), 3.0)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
            prediction = forward(model, noisy_latents(x0, noise, sigma), 1 - sigma, feats, lens, cap_len_max=feats.shape[1])
        loss = F.mse_loss(prediction.float(), velocity_target(x0, noise).float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(trainable, clip))
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        optimizer.step()
        losses.append(loss.detach())
    losses, norms = torch.stack(losses).tolist(), torch.stack(norms).tolist()

    def windows(values: list[float]) -> list[float]:
        return [round(sum(values[i:i + 100]) / len(values[i:i + 100]), 4) for i in range(0, steps, 100)]

    tail = losses[-200:]
    with torch.no_grad():
        embedding = model.t_embedder(torch.linspace(0, 1, 11, device=DEVICE) * model.t_scale)
    return {"last200_loss": sum(tail) / len(tail), "loss_every_100": windows(losses),
            "timestep_embedding_rms": float(embedding.pow(2).mean().sqrt()),
            "grad_norm_every_100": windows(norms), "max_loss": max(losses), "seconds": time.perf_counter() - start}


def stable(result: dict, tolerance: float = 1.15, growth: float = 10.0) -> bool:
    """The loss of the last window is within `tolerance` of the lowest window, and the gradient norm of
    the last window within `growth` x its lowest window: neither has started to run away."""
    curve, norms = result["loss_every_100"], result["grad_norm_every_100"]
    return curve[-1] <= tolerance * min(curve) and norms[-1] <= growth * min(norms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--train_scenes", type=int, default=120_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--build_only", action="store_true", help="build the data cache and stop")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    tensors = dit_tensors(WorldTrainingConfig(train_scenes=args.train_scenes), Path(args.output_dir), DEVICE)
    if args.build_only:
        return
    data = {name: tensor.to(DEVICE) for name, tensor in tensors.items()}
    results = {}
    for name in args.variants.split(","):
        results[name] = probe(data, steps=args.steps, batch=args.batch, **VARIANTS[name])
        results[name]["stable"] = stable(results[name])
        print(name, json.dumps(results[name]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
