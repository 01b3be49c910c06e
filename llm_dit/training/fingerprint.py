"""Which base model an adapter belongs to.

An adapter's deltas mean something only on the weights it was trained on. The
exact fingerprint is `llm_dit.models.fingerprint.model_fingerprint` (what every run records);
it hashes dtypes and values, so the same model loaded in bfloat16 for
inference would not match an adapter trained on its float32 copy. The portable
fingerprint hashes names, shapes and the same sampled values rounded to
bfloat16, which is equal for both: an adapter is accepted when either matches.
"""

from __future__ import annotations

import hashlib
import weakref

import torch
from torch import nn

from llm_dit.models.fingerprint import model_fingerprint

_MEMO: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, tuple[str, str]]] = weakref.WeakKeyDictionary()


def portable_fingerprint(module: nn.Module) -> str:
    """Like model_fingerprint, but independent of the weights' dtype (values rounded to bfloat16)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64].cpu()
        if sample.is_floating_point():
            sample = sample.to(torch.bfloat16).float()
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def base_fingerprints(transformer: nn.Module) -> tuple[str, str]:
    """(exact, portable) fingerprints; memoized until a weight changes (predict applies per batch)."""
    state = transformer.state_dict()
    version = tuple((name, id(t), t._version, t.dtype) for name, t in state.items())
    cached = _MEMO.get(transformer)
    if cached is not None and cached[0] == version:
        return cached[1]
    result = (model_fingerprint(transformer), portable_fingerprint(transformer))
    _MEMO[transformer] = (version, result)
    return result


def check_adapter_base(expected_exact: str, expected_portable: str, transformer: nn.Module, what: str,
                       made_with: str | None = None) -> None:
    """Refuse an adapter trained on other base weights, naming both fingerprints."""
    exact, portable = base_fingerprints(transformer)
    if expected_exact == exact or expected_portable == portable:
        return
    source = f" (it was trained on weights {made_with!r})" if made_with else ""
    raise ValueError(
        f"{what} was made for base model {expected_exact}{source}, but this transformer is {exact}: "
        "load the weights it was trained on (the same weights in another dtype are fine). "
        "If other surgery on this transformer comes before style_adapter, list style_adapter first."
    )
