"""The flow-matching objective in Z-Image's convention, checked against the sampler.

Rectified flow interpolates x_sigma = (1 - sigma) * x0 + sigma * noise, so the
velocity along sigma is d x / d sigma = noise - x0. The sampler
(llm_dit/sampling/euler.py, as ZImagePipeline) feeds the transformer
t = 1 - sigma and hands `-transformer_out` to FlowMatchEulerDiscreteScheduler,
whose step is prev = x + (sigma_next - sigma) * model_output. For that Euler
step to follow the flow, -transformer_out must be noise - x0: the target of the
RAW transformer output is therefore x0 - noise.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_dit.sampling.euler import run_transformer
from llm_dit.training.config import FlowMatchObjective

# Fixed noise levels of the validation loss: one per example, cycled (deterministic curve).
VALIDATION_SIGMAS = (0.25, 0.5, 0.75, 0.9)


def shift_sigmas(s: torch.Tensor, shift: float) -> torch.Tensor:
    """sigma' = shift*s / (1 + (shift-1)*s): the same warp the sampler's schedule uses."""
    return shift * s / (1 + (shift - 1) * s)


def sample_sigmas(objective: FlowMatchObjective, batch: int, device: torch.device | str = "cpu",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise levels [B] in (0, 1) for one training batch (float32)."""
    if objective.sigma_sampling == "uniform":
        s = torch.rand(batch, generator=generator)
    else:
        s = torch.sigmoid(objective.logit_mean + objective.logit_std * torch.randn(batch, generator=generator))
    return shift_sigmas(s, objective.shift).to(device)


def draw_noise(objective: FlowMatchObjective, x0: torch.Tensor, index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise like x0, sigma [B]) for a training batch: fresh from the global RNG, or, with
    `objective.fixed_noise_seed`, the same pair for an example every time it is seen."""
    if objective.fixed_noise_seed is None or index is None:
        return torch.randn_like(x0), sample_sigmas(objective, x0.shape[0], x0.device)
    noises, sigmas = [], []
    for i in index.tolist():
        generator = torch.Generator().manual_seed(objective.fixed_noise_seed * 1_000_003 + int(i))
        noises.append(torch.randn(x0.shape[1:], generator=generator))
        sigmas.append(sample_sigmas(objective, 1, generator=generator))
    return torch.stack(noises).to(x0), torch.cat(sigmas).to(x0.device)


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_sigma = (1 - sigma) * x0 + sigma * noise, sigma broadcast over [B, C, h, w]."""
    s = sigma.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Target of the raw transformer output: x0 - noise (the sampler negates the output)."""
    return x0 - noise


def flow_matching_loss(transformer: nn.Module, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor,
                       cap_feats: list[torch.Tensor]) -> torch.Tensor:
    """MSE between the transformer's raw output at (x_sigma, t = 1 - sigma) and x0 - noise, in float32."""
    x_t = noisy_latents(x0.float(), noise.float(), sigma.float())
    prediction = run_transformer(transformer, x_t, 1 - sigma.float(), cap_feats)
    return torch.nn.functional.mse_loss(prediction.float(), velocity_target(x0.float(), noise.float()))


def validation_noise(index: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise (seeded by the example index) and a fixed sigma per example, for the validation loss."""
    noise = torch.stack([torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(int(i))) for i in index])
    sigma = torch.tensor([VALIDATION_SIGMAS[int(i) % len(VALIDATION_SIGMAS)] for i in index])
    return noise.to(latents.device), sigma.to(latents.device)
