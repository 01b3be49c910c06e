"""The Qwen3 chat template, built by hand, with a segment label for every token.

Why not `tokenizer.apply_chat_template`: its jinja output is one opaque string,
and the studies need to know which tokens are the system turn, the user prompt,
the think block or the template itself (to drop, weight or inspect them). The
text built here is byte-identical to the jinja template for the cases the
tokenizer covers (tests check it), and the token ids are those of tokenizing
the whole text in one go, exactly as diffusers does.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from llm_dit.encoding.options import EncodingOptions

SEGMENT_LABELS: tuple[str, ...] = ("system", "user", "think", "assistant", "template")
TEMPLATE = "template"

Piece = tuple[str, str]  # (segment label, text)


@dataclass(frozen=True)
class TemplatedPrompt:
    """A prompt in its chat template: the text, its token ids and one label per token.

    Attributes:
        text: the templated string, as the encoder sees it.
        token_ids: ids of `text` tokenized in one go (no padding, no truncation).
        segments: one of SEGMENT_LABELS per token.
        pieces: the (label, text) pieces `text` was built from, in order.
    """

    text: str
    token_ids: list[int]
    segments: list[str]
    pieces: tuple[Piece, ...]

    def __len__(self) -> int:
        return len(self.token_ids)


def build_pieces(prompt: str, options: EncodingOptions | None = None) -> list[Piece]:
    """The template as labelled pieces; their concatenation is the chat text.

    Default options give diffusers' text, `<|im_start|>user\\n{p}<|im_end|>\\n<|im_start|>assistant\\n`
    (= `apply_chat_template(..., add_generation_prompt=True, enable_thinking=True)`).
    A think block is `<think>\\n{thinking}\\n</think>\\n\\n`, empty when forced without
    content (= `enable_thinking=False`); `assistant_content` comes last, with no
    closing `<|im_end|>`, as if the model were still writing its answer.
    """
    options = options or EncodingOptions()
    pieces: list[Piece] = []
    if options.system_prompt is not None:
        pieces += _turn("system", options.system_prompt)
    pieces += _turn("user", prompt)
    pieces.append((TEMPLATE, "<|im_start|>assistant\n"))
    if options.thinking_content is not None:
        pieces += [(TEMPLATE, "<think>\n"), ("think", options.thinking_content), (TEMPLATE, "\n</think>\n\n")]
    elif options.force_think_block:
        pieces.append((TEMPLATE, "<think>\n\n</think>\n\n"))
    if options.assistant_content is not None:
        pieces.append(("assistant", options.assistant_content))
    return [(label, text) for label, text in pieces if text]


def render_chat_text(prompt: str, options: EncodingOptions | None = None) -> str:
    """The chat text alone (what the tokenizer receives)."""
    return "".join(text for _, text in build_pieces(prompt, options))


def tokenize_chat(prompt: str, tokenizer: PreTrainedTokenizerBase, options: EncodingOptions | None = None) -> TemplatedPrompt:
    """Tokenize the chat text in one go and label each token from its character span.

    Tokenizing piece by piece would be wrong: byte-level BPE merges across piece
    boundaries (the template's `user\\n` and a prompt starting with `\\n` become
    one `\\n\\n` token). So the whole text is tokenized, as diffusers does, and a
    token gets the label of the first non-template piece its characters overlap
    (content wins over template), else "template".
    """
    pieces = build_pieces(prompt, options)
    text = "".join(piece for _, piece in pieces)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; segment labels need offset mappings")
    encoded = tokenizer(text, return_offsets_mapping=True)
    spans = _char_spans(pieces)
    segments = [_label_for(start, end, spans) for start, end in encoded["offset_mapping"]]
    return TemplatedPrompt(text, list(encoded["input_ids"]), segments, tuple(pieces))


def _turn(role: str, content: str) -> list[Piece]:
    return [(TEMPLATE, f"<|im_start|>{role}\n"), (role, content), (TEMPLATE, "<|im_end|>\n")]


def _char_spans(pieces: list[Piece]) -> list[tuple[str, int, int]]:
    spans, start = [], 0
    for label, text in pieces:
        spans.append((label, start, start + len(text)))
        start += len(text)
    return spans


def _label_for(start: int, end: int, spans: list[tuple[str, int, int]]) -> str:
    """Label of a token covering characters [start, end); empty spans (added BOS/EOS) are template."""
    for label, span_start, span_end in spans:
        if label != TEMPLATE and start < span_end and span_start < end:
            return label
    return TEMPLATE
