"""A cheap, stable fingerprint of a module's weights (model layer: runs, adapters and saved
embeddings all record it, so it lives below them)."""

from __future__ import annotations

import hashlib
from typing import Any


def model_fingerprint(module: Any) -> str:
    """SHA-256 over parameter names, shapes and a strided sample of values: cheap, stable, weight-sensitive."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64].float().cpu()
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]
