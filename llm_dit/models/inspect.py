"""Read a model's shape from its config files, without loading weights (for early validation)."""

from __future__ import annotations

import json
from pathlib import Path

from llm_dit.models.tiny import TINY_ENCODER_LAYERS


def encoder_hidden_states(weights: str) -> int | None:
    """Number of hidden states the encoder returns (layers + 1), or None when unknown here."""
    if weights == "tiny":
        return TINY_ENCODER_LAYERS + 1
    config = Path(weights).expanduser() / "text_encoder" / "config.json"
    if not config.is_file():
        return None
    layers = json.loads(config.read_text()).get("num_hidden_layers")
    return None if layers is None else int(layers) + 1
