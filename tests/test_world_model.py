"""The embedded world model's training path: batched DiT forward parity, and each stage learns."""

from __future__ import annotations

import pytest
import torch
from diffusers import ZImageTransformer2DModel

from llm_dit.models.tiny import TINY_TRANSFORMER_CONFIG
from llm_dit.world_model.batched import batched_forward


@pytest.fixture(scope="module")
def transformer() -> ZImageTransformer2DModel:
    torch.manual_seed(0)
    model = ZImageTransformer2DModel(**TINY_TRANSFORMER_CONFIG).eval()
    for parameter in (model.x_pad_token, model.cap_pad_token):
        parameter.data.normal_()
    return model


@pytest.mark.parametrize("lengths", [[5, 40, 32], [5, 7, 12], [32, 32, 32]], ids=["mixed-buckets", "one-bucket", "exact"])
@pytest.mark.parametrize("size", [16, 8, 6], ids=["64-tokens", "16-tokens", "9-tokens"])
def test_batched_forward_matches_diffusers(transformer, lengths, size):
    """Same velocity as diffusers' list-based forward: caption padding, RoPE ids and masks included."""
    generator = torch.Generator().manual_seed(1)
    batch = len(lengths)
    latents = torch.randn(batch, 16, size, size, generator=generator)
    t = torch.rand(batch, generator=generator)
    caps = torch.randn(batch, max(lengths) + 3, TINY_TRANSFORMER_CONFIG["cap_feat_dim"], generator=generator)
    with torch.no_grad():
        reference = transformer([x[:, None] for x in latents], t, [caps[i, :n] for i, n in enumerate(lengths)]).sample
        reference = torch.stack([r[:, 0] for r in reference])
        ours = batched_forward(transformer, latents, t, caps, torch.tensor(lengths))
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_batched_forward_static_caption_width_matches(transformer):
    """A fixed caption width (what training passes under torch.compile) only adds masked positions."""
    generator = torch.Generator().manual_seed(2)
    lengths = torch.tensor([5, 33, 12])
    latents, t = torch.randn(3, 16, 8, 8, generator=generator), torch.rand(3, generator=generator)
    caps = torch.randn(3, 40, TINY_TRANSFORMER_CONFIG["cap_feat_dim"], generator=generator)
    with torch.no_grad():
        natural = batched_forward(transformer, latents, t, caps, lengths)
        static = batched_forward(transformer, latents, t, caps, lengths, cap_len_max=96)
    torch.testing.assert_close(static, natural, rtol=1e-5, atol=1e-5)


def test_batched_forward_fires_block_hooks(transformer):
    """Surgery hooks on the refiner blocks see the batched path too."""
    calls = []
    handle = transformer.context_refiner[0].register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    try:
        with torch.no_grad():
            batched_forward(transformer, torch.randn(2, 16, 8, 8), torch.rand(2), torch.randn(2, 10, 32), torch.tensor([10, 4]))
    finally:
        handle.remove()
    assert calls == [torch.Size([2, 32, 64])]


def test_style_dataset_is_one_style_and_captions_never_say_it(tmp_path):
    """The style-adapter data: every drawn object striped (the evaluator agrees), no caption states a style."""
    import numpy as np
    from PIL import Image

    from llm_dit.world.detection import detect
    from llm_dit.world.parse import expected_facts
    from llm_dit.world_model.style_data import write_world_style_dataset

    paths = write_world_style_dataset(tmp_path, count=12, size=64, seed=3)
    assert len(paths) == 12
    for path in paths:
        caption = path.with_suffix(".txt").read_text().strip()
        assert caption and all(fact.style is None for fact in expected_facts(caption).objects)
        objects = detect(np.asarray(Image.open(path).convert("RGB"))).objects
        assert objects and {o.style for o in objects} == {"striped"}


def test_wilson_interval_matches_its_closed_form():
    """95 % Wilson score interval against published values (statsmodels' proportion_confint(..., method="wilson")
    gives 0.4038-0.5962 for 50/100 and 0-0.2775 for 0/10)."""
    from llm_dit.world_model.evaluate import wilson

    low, high = wilson(50, 100)
    assert abs(low - 0.4038) < 1e-4 and abs(high - 0.5962) < 1e-4
    assert wilson(0, 10)[0] == 0.0 and abs(wilson(0, 10)[1] - 0.2775) < 1e-4


def test_bar_prompts_hold_heldout_combinations_and_the_train_split_none():
    from llm_dit.world.parse import expected_facts
    from llm_dit.world_model.evaluate import bar_prompts

    for kind, objects in (("one_object", 1), ("colour_binding", 2)):
        pairs = bar_prompts(kind, 10)
        for scene, prompt in pairs:
            assert scene.held_out and len(scene.objects) == objects
            assert len(expected_facts(prompt).objects) == objects
        if kind == "colour_binding":
            assert all(a.colour != b.colour and a.shape != b.shape for a, b in (s.objects for s, _ in pairs))
        trained = bar_prompts(kind, 10, split="train")  # the memorisation-vs-composition contrast
        assert all(not scene.held_out and len(scene.objects) == objects for scene, _ in trained)
