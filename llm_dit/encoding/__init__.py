"""Prompt -> caption features: chat template with segment labels, the text encoder, long prompts.

The names below are imported on first use (llm_dit._lazy), so reading a study's encoding options
(`llm_dit.encoding.options`, e.g. for `report`) does not load transformers and torch.
"""

from llm_dit._lazy import lazy_exports

_EXPORTS = {
    "EncodedPrompt": "llm_dit.encoding.encoder",
    "ZImageTextEncoder": "llm_dit.encoding.encoder",
    "combine_layers": "llm_dit.encoding.encoder",
    "FittedSequence": "llm_dit.encoding.compression",
    "fit_to_length": "llm_dit.encoding.compression",
    "EncodingOptions": "llm_dit.encoding.options",
    "SEGMENT_LABELS": "llm_dit.encoding.template",
    "TemplatedPrompt": "llm_dit.encoding.template",
    "build_pieces": "llm_dit.encoding.template",
    "render_chat_text": "llm_dit.encoding.template",
    "tokenize_chat": "llm_dit.encoding.template",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
