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
