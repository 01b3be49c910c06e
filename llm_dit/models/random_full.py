"""The `random-z-image-turbo` preset: full-size Z-Image-Turbo with deterministic random weights.

Same classes and shapes as the real model (6.15 B DiT, Qwen3-4B encoder, FLUX VAE),
no download. It exists for benchmarks: speed does not depend on the weights'
values, so timings on it are the real model's timings (images are noise-like).
Weights are drawn directly on the target device in the target dtype, so a GPU
gets ~20 GB of bf16 weights in seconds instead of a minute of CPU init.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
from transformers import Qwen3Config, Qwen3Model

from llm_dit.models.components import ZImageComponents
from llm_dit.models.tiny import ZIMAGE_SCHEDULER_CONFIG, load_bundled_tokenizer

RANDOM_PRESET = "random-z-image-turbo"

# Z-Image-Turbo's transformer/config.json.
ZIMAGE_TURBO_TRANSFORMER_CONFIG = dict(
    all_patch_size=(2,),
    all_f_patch_size=(1,),
    in_channels=16,
    dim=3840,
    n_layers=30,
    n_refiner_layers=2,
    n_heads=30,
    n_kv_heads=30,
    norm_eps=1e-5,
    qk_norm=True,
    cap_feat_dim=2560,
    rope_theta=256.0,
    t_scale=1000.0,
    axes_dims=[32, 48, 48],
    axes_lens=[1536, 512, 512],
)

# Qwen3-4B (Z-Image-Turbo's text_encoder/config.json).
QWEN3_4B_CONFIG = dict(
    vocab_size=151936,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)

# The FLUX VAE (Z-Image-Turbo's vae/config.json).
FLUX_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def _building_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters straight on `device` in `dtype`; restores the default dtype after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_random_components(
    seed: int = 0, dtype: torch.dtype = torch.bfloat16, device: torch.device | str | None = None
) -> ZImageComponents:
    """Full-size Z-Image-Turbo with random weights drawn from `seed` on `device` (default: cuda if any)."""
    device = torch.device(device) if device is not None else default_device()
    tokenizer = load_bundled_tokenizer()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), _building_on(device, dtype):
        torch.manual_seed(seed)
        text_encoder = Qwen3Model(Qwen3Config(**QWEN3_4B_CONFIG))
        transformer = ZImageTransformer2DModel(**ZIMAGE_TURBO_TRANSFORMER_CONFIG)
        for pad_token in (transformer.x_pad_token, transformer.cap_pad_token):
            pad_token.data.normal_(0.0, 0.02)  # trained pad tokens are not zero
        vae = AutoencoderKL(**FLUX_VAE_CONFIG)
    scheduler = FlowMatchEulerDiscreteScheduler(**ZIMAGE_SCHEDULER_CONFIG)
    components = ZImageComponents(
        text_encoder, tokenizer, transformer, vae, scheduler, source=f"{RANDOM_PRESET}(seed={seed}, {device})"
    )
    for module in components.modules().values():
        module.eval().requires_grad_(False)
    return components
