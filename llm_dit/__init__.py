"""llm-dit: model surgery and ablation studies for LLM-encoder diffusion transformers (Z-Image-Turbo).

The public API, imported lazily so `python -m llm_dit.cli` starts fast:

    from llm_dit import ZImageModule, ZImageTextEncoder, EncodingOptions, SamplerSettings
    from llm_dit import Study, ConditionSpec, load_components, build_tiny_components, ZImageConfig

Surgery lives in the top-level package `surgery`, callbacks in `callbacks`.
"""

from __future__ import annotations

from llm_dit._lazy import lazy_exports

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
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
