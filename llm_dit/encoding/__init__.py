"""Prompt -> caption features: chat template with segment labels, the text encoder, long prompts."""

from llm_dit.encoding.encoder import EncodedPrompt, ZImageTextEncoder, combine_layers
from llm_dit.encoding.compression import FittedSequence, fit_to_length
from llm_dit.encoding.options import EncodingOptions
from llm_dit.encoding.template import SEGMENT_LABELS, TemplatedPrompt, build_pieces, render_chat_text, tokenize_chat

__all__ = [
    "SEGMENT_LABELS",
    "EncodedPrompt",
    "EncodingOptions",
    "FittedSequence",
    "TemplatedPrompt",
    "ZImageTextEncoder",
    "build_pieces",
    "combine_layers",
    "fit_to_length",
    "render_chat_text",
    "tokenize_chat",
]
