"""Shared fixtures: the tiny model is built once per session (it is deterministic)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny():
    from llm_dit.models import build_tiny_components

    return build_tiny_components(seed=0)


@pytest.fixture(autouse=True)
def _restore_torch_state():
    """Tests must not leak global torch state (default dtype, grad mode) into each other."""
    dtype, grad = torch.get_default_dtype(), torch.is_grad_enabled()
    yield
    torch.set_default_dtype(dtype)
    torch.set_grad_enabled(grad)
