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
@pytest.mark.parametrize("size", [8, 6], ids=["16-tokens", "9-tokens"])
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
