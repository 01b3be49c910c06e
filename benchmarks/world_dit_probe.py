"""Short DiT training probes on the world data: which training-forward variant learns (GPU).

    python benchmarks/world_dit_probe.py lightning_logs/world_model --steps 250

Each variant trains a fresh DiT for `--steps` steps (batch 256, warm-up 100 steps) on the
exported VAE's latents and encoder's features, and reports the mean loss of its last 100
steps. Written after the 2026-12-03 second run stalled at loss ~0.9 and diverged.
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
    "static_compiled_5e-4": dict(static=True, compiled=True, lr=5e-4),
    "natural_compiled_5e-4": dict(static=False, compiled=True, lr=5e-4),
    "static_eager_5e-4": dict(static=True, compiled=False, lr=5e-4),
    "static_compiled_2e-4": dict(static=True, compiled=True, lr=2e-4),
    # What the Lightning stage does on top (both captions, 10 % dropout to the empty prompt), and
    # the stabilisers to try against the divergence seen after ~250 steps (benchmarks/NOTES.md).
    "dropout_5e-4": dict(static=True, compiled=True, lr=5e-4, dropout=0.1),
    "dropout_2e-4_b95": dict(static=True, compiled=True, lr=2e-4, dropout=0.1, beta2=0.95),
    "dropout_1e-4_b95": dict(static=True, compiled=True, lr=1e-4, dropout=0.1, beta2=0.95),
    "dropout_2e-4_b95_clip05": dict(static=True, compiled=True, lr=2e-4, dropout=0.1, beta2=0.95, clip=0.5),
}


def probe(data, static: bool, compiled: bool, lr: float, steps: int, batch: int = 256, dropout: float = 0.0,
          beta2: float = 0.99, clip: float = 1.0) -> dict[str, float]:
    latents = data["latents"]
    torch.manual_seed(0)
    stage = DitStage(StageSettings(max_steps=steps, batch_size=batch, learning_rate=lr), compile=False).to(DEVICE)
    model = stage.transformer
    model.rope_embedder(torch.zeros(1, 3, dtype=torch.long, device=DEVICE))
    forward = torch.compile(batched_forward, dynamic=False) if compiled else batched_forward
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, beta2), weight_decay=0.0)
    losses, start = [], time.perf_counter()
    for step in range(steps):
        index = torch.randint(0, len(latents), (batch,), device=DEVICE)
        which = index * 2 + (torch.randint(0, 2, (batch,), device=DEVICE) if dropout else 0)
        feats, lens = caption_batch(data, which, dropout or None)
        width = feats.shape[1]
        x0 = latents[index]
        noise = torch.randn_like(x0)
        sigma = shift_sigmas(torch.sigmoid(torch.randn(batch, device=DEVICE)), 3.0)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
            prediction = forward(model, noisy_latents(x0, noise, sigma), 1 - sigma, feats, lens,
                                 cap_len_max=width if static else None)
        loss = F.mse_loss(prediction.float(), velocity_target(x0, noise).float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100)
        optimizer.step()
        losses.append(loss.item())
    tail, head = losses[-100:], losses[:100]
    return {"last100_loss": sum(tail) / len(tail), "first100_loss": sum(head) / len(head), "max_loss": max(losses),
            "loss_every_100": [round(sum(losses[i:i + 100]) / len(losses[i:i + 100]), 4) for i in range(0, steps, 100)],
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--train_scenes", type=int, default=120_000)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    tensors = dit_tensors(WorldTrainingConfig(train_scenes=args.train_scenes), Path(args.output_dir), DEVICE)
    data = {name: tensor.to(DEVICE) for name, tensor in tensors.items()}
    results = {}
    for name in args.variants.split(","):
        results[name] = probe(data, steps=args.steps, batch=args.batch, **VARIANTS[name])
        print(name, json.dumps(results[name]), flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
