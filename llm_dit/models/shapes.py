"""The shapes of every model preset, as plain config dicts (no imports: any module may read them).

`llm_dit.models.config.ZImageConfig` names them (`from_name`), the builders (tiny.py,
random_full.py) build from them, and single-file loading fills what a file's tensors do not say
with the real model's values.
"""

from __future__ import annotations

from typing import Any

# ----- the small random preset (`tiny-random`, for unit tests; `tiny` is the trained world model) --------

# Caption feature size == encoder hidden size, as in the real model (2560).
TINY_HIDDEN = 32
TINY_ENCODER_LAYERS = 8  # >= 6 so the hidden-layer study (-1..-6) has distinct layers

TINY_TEXT_ENCODER_CONFIG = dict(
    hidden_size=TINY_HIDDEN,
    intermediate_size=64,
    num_hidden_layers=TINY_ENCODER_LAYERS,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    max_position_embeddings=4096,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)

TINY_TRANSFORMER_CONFIG = dict(
    all_patch_size=(2,),
    all_f_patch_size=(1,),
    in_channels=16,
    dim=64,
    n_layers=2,
    n_refiner_layers=2,
    n_heads=2,
    n_kv_heads=2,
    norm_eps=1e-5,
    qk_norm=True,
    cap_feat_dim=TINY_HIDDEN,
    rope_theta=256.0,
    t_scale=1000.0,
    axes_dims=[8, 12, 12],
    axes_lens=[1536, 512, 512],
)

TINY_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 16, 16, 16],
    layers_per_block=1,
    latent_channels=16,
    norm_num_groups=4,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)

# Z-Image-Turbo's scheduler config: fixed shift 3, no resolution-dependent shift.
ZIMAGE_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)


# ----- the real configs (Z-Image-Turbo, Qwen3-4B, FLUX.1 VAE) -----------------------

ZIMAGE_TURBO_TRANSFORMER_CONFIG: dict[str, Any] = dict(
    all_patch_size=[2], all_f_patch_size=[1], in_channels=16, dim=3840, n_layers=30,
    n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True,
    cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0,
    axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512],
)
QWEN3_4B_CONFIG: dict[str, Any] = dict(
    vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
    num_attention_heads=32, num_key_value_heads=8, head_dim=128, attention_bias=False,
    rope_theta=1_000_000.0, rms_norm_eps=1e-6, max_position_embeddings=40960,
    tie_word_embeddings=True,
)
FLUX_VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=16,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
    mid_block_add_attention=True, scaling_factor=0.3611, shift_factor=0.1159,
    use_quant_conv=False, use_post_quant_conv=False, force_upcast=True, sample_size=1024,
)
