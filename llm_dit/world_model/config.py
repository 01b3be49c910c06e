"""Sizes and training settings of the embedded world model (`--model.weights tiny`).

Same classes as Z-Image-Turbo, small enough that the three shipped safetensors stay
under 25 MiB (bf16) and a study of a few hundred 64 px images runs on two CPU cores
in under a minute. The encoder's embedding matrix (the real 151,669-token Qwen3
vocabulary x hidden size) dominates its size, hence the narrow hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

IMAGE_SIZE = 64
"""Pixels per side the embedded model is trained at (16 x 16 latents, 64 image tokens)."""

ENCODER_CONFIG = dict(
    hidden_size=32,
    intermediate_size=128,
    num_hidden_layers=8,  # >= 6 so the hidden-layer study (-1 .. -6) has distinct layers
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=4096,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)

TRANSFORMER_CONFIG = dict(
    all_patch_size=(2,),
    all_f_patch_size=(1,),
    in_channels=16,
    dim=192,
    n_layers=6,
    n_refiner_layers=2,
    n_heads=4,
    n_kv_heads=4,
    norm_eps=1e-5,
    qk_norm=True,
    cap_feat_dim=ENCODER_CONFIG["hidden_size"],
    rope_theta=256.0,
    t_scale=1000.0,
    axes_dims=[8, 20, 20],
    axes_lens=[1536, 512, 512],
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    # Three blocks downsample 4x (64 px -> 16 x 16 latents). Z-Image's VAE downsamples 8x, but at
    # 64 px that leaves 16 image tokens and loses the 4 px fill patterns (benchmarks/NOTES.md).
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[32, 64, 128],
    layers_per_block=1,
    latent_channels=16,
    norm_num_groups=32,
    scaling_factor=1.0,  # set from the trained encoder's latent statistics
    shift_factor=0.0,
    use_quant_conv=False,
    use_post_quant_conv=False,
)


@dataclass
class StageSettings:
    """One training stage's knobs (each stage is its own Lightning run).

    Attributes:
        max_steps: optimizer steps of the whole stage (a resumed piece continues the count).
        batch_size: images (or captions) per step.
        learning_rate: AdamW peak rate (linear warm-up, cosine decay to 10 %).
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay.
        beta2: AdamW's second-moment decay (0.95 steadies transformer training).
        gradient_clip: largest gradient norm of a step.
    """

    max_steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int = 200
    weight_decay: float = 0.0
    beta2: float = 0.99
    gradient_clip: float = 1.0


@dataclass
class WorldTrainingConfig:
    """The recipe of the embedded model: data sizes, seeds and each stage's settings.

    Attributes:
        seed: seeds the scenes, the renderer's jitter, captions and the weights.
        train_scenes: rendered training scenes (train split: no held-out combination).
        heldout_scenes: held-out-split scenes for validation numbers.
        captions_per_scene: training captions drawn per scene (templates, forms, synonyms).
        caption_dropout: DiT stage: fraction of captions replaced by the empty prompt (for CFG).
        kl_weight: VAE stage: weight of the KL term next to the pixel MSE.
        ema_decay: DiT stage: decay of the exponential moving average of the weights (what ships).
        encoder_answer_weight: encoder stage: loss weight of the assistant answer's tokens (the copy of
            the user's scene; 1 weighs every token alike).
        encoder_tied_embeddings: encoder stage: the language model's output head is its input embedding
            (Qwen3-4B's choice); False trains a separate head, dropped at export.
        encoder_frozen_embeddings: encoder stage: keep the input embedding at its random start (needs an
            untied head); the layers learn to use it.
        encoder_layers: encoder stage: its number of layers (the DiT reads layer -2; at least 6 keeps the
            hidden-layer study's -1 .. -6 distinct). Fewer layers put -2 nearer the embedding, where the
            noun still holds its shape for unseen colour-shape pairs (fifth session's composition probe).
        dit_frozen_timestep_embedder: DiT stage: keep the timestep embedder at its random start.
        dit_high_noise_fraction: DiT stage: share of each batch whose noise level is drawn uniformly from
            [0.98, 1] (the first sampling step) instead of the shifted logit-normal, so global attributes
            like the background are learned from the caption (0: Z-Image's sampling alone).
        dit_init: DiT stage: "adaln_zero" starts every block as the identity and the output at zero
            (DiT's recipe); "diffusers" keeps the class's random start.
        vae, encoder, dit: per-stage settings.
    """

    seed: int = 0
    train_scenes: int = 200_000
    heldout_scenes: int = 4_000
    captions_per_scene: int = 2
    caption_dropout: float = 0.1
    kl_weight: float = 1e-6
    vae: StageSettings = field(default_factory=lambda: StageSettings(max_steps=6000, batch_size=256, learning_rate=1e-3))
    ema_decay: float = 0.999
    dit_init: Literal["diffusers", "adaln_zero"] = "diffusers"
    dit_frozen_timestep_embedder: bool = True
    dit_high_noise_fraction: float = 0.0
    encoder_answer_weight: float = 1.0
    encoder_tied_embeddings: bool = True
    encoder_frozen_embeddings: bool = False
    encoder_layers: int = ENCODER_CONFIG["num_hidden_layers"]
    encoder: StageSettings = field(default_factory=lambda: StageSettings(max_steps=4000, batch_size=256, learning_rate=3e-3, weight_decay=0.01))
    dit: StageSettings = field(default_factory=lambda: StageSettings(max_steps=20000, batch_size=256, learning_rate=5e-4))
