"""Read a model's shape from its config files, without loading weights (for early validation)."""

from __future__ import annotations

import json
from pathlib import Path

from llm_dit.models.tiny import TINY_ENCODER_LAYERS, TINY_TRANSFORMER_CONFIG


def encoder_hidden_states(weights: str) -> int | None:
    """Number of hidden states the encoder returns (layers + 1), or None when unknown here."""
    if weights in ("tiny", "tiny-random"):
        return TINY_ENCODER_LAYERS + 1
    config = Path(weights).expanduser() / "text_encoder" / "config.json"
    if not config.is_file():
        return None
    layers = json.loads(config.read_text()).get("num_hidden_layers")
    return None if layers is None else int(layers) + 1


def transformer_block_counts(weights: str) -> dict[str, int] | None:
    """Blocks per surgery target (context_refiner, noise_refiner, layers), or None when unknown here."""
    if weights in ("tiny", "tiny-random"):
        config = TINY_TRANSFORMER_CONFIG
    else:
        path = Path(weights).expanduser() / "transformer" / "config.json"
        if not path.is_file():
            return None
        config = json.loads(path.read_text())
    refiner = int(config.get("n_refiner_layers", 2))
    return {"context_refiner": refiner, "noise_refiner": refiner, "layers": int(config.get("n_layers", 30))}
