"""Shared fixtures: the tiny model is built once per session (it is deterministic)."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls gain nothing from threads, and OpenMP spin-waits on busy cores cost ~80x.

    Modules that train or run many tiny forwards opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_transformer() -> nn.Module:
    """A tiny DiT per test module, for tests that only read it or undo what they do."""
    from llm_dit.models import build_tiny_components

    return build_tiny_components(seed=0).transformer


@pytest.fixture
def transformer(base_transformer: nn.Module) -> nn.Module:
    """A private copy: tests may mutate it (requires_grad, checkpointing, nnsight, weights)."""
    return copy.deepcopy(base_transformer)
