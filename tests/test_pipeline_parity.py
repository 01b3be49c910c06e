"""The llm-dit sampling path reproduces diffusers' ZImagePipeline on the same weights, prompt and seed."""

from __future__ import annotations

import pytest
import torch
from diffusers import ZImagePipeline

from llm_dit.encoding.options import EncodingOptions
from llm_dit.module import ZImageModule
from llm_dit.sampling.settings import SamplerSettings
from llm_dit.study import StudyItem


@pytest.fixture(scope="module")
def module():
    module = ZImageModule(weights="tiny-random")
    module.configure_model()
    return module


def make_item(prompt: str, seed: int, **sampler) -> StudyItem:
    return StudyItem(
        item_id=f"c/p000_s{seed}", study="parity", condition="c", condition_index=0, prompt_index=0,
        prompt=prompt, original_prompt=prompt, prompt_type=None, seed=seed,
        encoding=EncodingOptions(), sampler=SamplerSettings(height=64, width=64, **sampler),
    )


def diffusers_image(module: ZImageModule, prompt: str, seed: int, steps: int, guidance: float, shift: float = 3.0):
    c = module.components
    scheduler = c.scheduler.__class__.from_config(c.scheduler.config, shift=shift)
    pipe = ZImagePipeline(scheduler=scheduler, vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, transformer=c.transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt, height=64, width=64, num_inference_steps=steps, guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed), output_type="pt",
    ).images


@pytest.mark.parametrize("guidance", [0.0, 4.0])
def test_sampling_matches_diffusers(module, guidance):
    prompt, seed = "A cat sleeping on a red couch", 42
    reference = diffusers_image(module, prompt, seed, steps=4, guidance=guidance)
    ours, *_ = module.generate([make_item(prompt, seed, steps=4, guidance_scale=guidance)])
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() < 1e-3


def test_shift_reaches_the_scheduler(module):
    prompt, seed = "A bowl of fresh fruit", 7
    reference = diffusers_image(module, prompt, seed, steps=3, guidance=0.0, shift=1.5)
    ours, *_ = module.generate([make_item(prompt, seed, steps=3, shift=1.5)])
    assert (ours - reference).abs().max().item() < 1e-3
    other, *_ = module.generate([make_item(prompt, seed, steps=3, shift=3.0)])
    assert (other - ours).abs().max().item() > 1e-4


def test_noise_depends_only_on_seed(module):
    """An item's image is the same alone or in a batch with other items (masked attention aside)."""
    alone, *_ = module.generate([make_item("A red cat", 5, steps=2)])
    batched, *_ = module.generate([make_item("A red cat", 5, steps=2), make_item("A red cat", 9, steps=2)])
    assert torch.allclose(alone[0], batched[0], atol=1e-5)


def test_shipped_tiny_loads_in_plain_diffusers_and_matches(tmp_path):
    """README's snippet: the trained `tiny` folder through `ZImagePipeline.from_pretrained` (tokenizer
    given, the folder leaves it out) draws what llm-dit draws for the same prompt and seed. The dtype
    must be given: without it diffusers loads its parts in float32 but transformers keeps the
    encoder's stored bf16 (max pixel difference 0.05 here)."""
    from transformers import AutoTokenizer

    from llm_dit.models import bundled_tokenizer_dir, embedded_model_folder

    pipe = ZImagePipeline.from_pretrained(embedded_model_folder("tiny"), torch_dtype=torch.float32,
                                          tokenizer=AutoTokenizer.from_pretrained(bundled_tokenizer_dir()))
    pipe.set_progress_bar_config(disable=True)
    prompt, seed = "One cyan star against a white background.", 3
    reference = pipe(prompt, height=64, width=64, num_inference_steps=8, guidance_scale=0.0,
                     generator=torch.Generator().manual_seed(seed), output_type="pt").images
    trained = ZImageModule(weights="tiny")
    trained.configure_model()
    ours, *_ = trained.generate([make_item(prompt, seed, steps=8)])
    assert (ours - reference).abs().max().item() < 1e-3
