"""Module options reach the loader: per-component dtype, VAE tiling, freeing the encoder."""

from __future__ import annotations

import torch

from llm_dit.models.placement import Placement
from llm_dit.module import ZImageModule


def test_placement_sets_component_dtypes_and_tiling():
    module = ZImageModule(weights="tiny-random", load={"placement": Placement(vae_dtype="bfloat16", vae_tiling=True)})
    module.configure_model()
    assert module.vae.dtype == torch.bfloat16
    assert module.transformer.dtype == torch.float32
    assert module.vae.use_tiling
