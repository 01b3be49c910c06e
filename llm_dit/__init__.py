"""llm-dit: model surgery and ablation studies for LLM-encoder diffusion transformers (Z-Image-Turbo).

The public API, imported lazily so `python -m llm_dit.cli` starts fast:

    from llm_dit import ZImageModule, ZImageTextEncoder, EncodingOptions, SamplerSettings
    from llm_dit import Study, ConditionSpec, load_components, build_tiny_components, ZImageConfig

Surgery lives in the top-level package `surgery`, callbacks in `callbacks`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ZImageModule": "llm_dit.module",
    "ZImageTextEncoder": "llm_dit.encoding.encoder",
    "EncodedPrompt": "llm_dit.encoding.encoder",
    "EncodingOptions": "llm_dit.encoding.options",
    "SamplerSettings": "llm_dit.sampling.settings",
    "Study": "llm_dit.study",
    "ConditionSpec": "llm_dit.study",
    "PromptSpec": "llm_dit.encoding.prompt_spec",
    "StudyItem": "llm_dit.study",
    "StudyDataModule": "llm_dit.data",
    "load_components": "llm_dit.models.loading",
    "build_tiny_components": "llm_dit.models.tiny",
    "ZImageComponents": "llm_dit.models.components",
    "ZImageConfig": "llm_dit.models.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'llm_dit' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
