"""Flow-match sigma schedule with Z-Image's shift, computed by diffusers' own scheduler."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler


def z_image_base_sigmas(steps: int) -> list[float]:
    """ZImagePipeline's unshifted schedule: linspace(1, 1/N, N)."""
    return torch.linspace(1.0, 1 / steps, steps).tolist()


def make_scheduler(
    base: FlowMatchEulerDiscreteScheduler, steps: int, shift: float, device: torch.device | str = "cpu"
) -> FlowMatchEulerDiscreteScheduler:
    """A fresh scheduler with `shift`, timesteps set exactly as ZImagePipeline sets them.

    A new instance per batch keeps the scheduler's step counter out of shared state
    and lets every condition use its own shift.
    """
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(base.config, shift=shift, use_dynamic_shifting=False)
    scheduler.set_timesteps(sigmas=z_image_base_sigmas(steps), device=device)
    scheduler.set_begin_index(0)
    return scheduler


def shifted_sigmas(steps: int, shift: float) -> list[float]:
    """sigma' = shift*sigma/(1+(shift-1)*sigma) over ZImagePipeline's base schedule, plus the final 0."""
    sigmas = torch.tensor(z_image_base_sigmas(steps), dtype=torch.float64)
    return (shift * sigmas / (1 + (shift - 1) * sigmas)).tolist() + [0.0]
