"""Long prompts with known key elements at known token positions (seed study 5).

The long-prompt study asks which compression mode keeps which part of a prompt
longer than the DiT's window (Q5.1-Q5.6). That needs prompts whose content is
known exactly: a few key elements ("a red cat", "a blue dog", ...) placed at
recorded token positions, the rest neutral scene-description filler that names
no competing object or colour. A content-preservation metric can then score
each element against the image and relate it to where the element sat (e.g.
before or after the 1024-token cut of `truncate`).

Lengths count Qwen3 tokens of the whole chat template (default EncodingOptions:
no system prompt, no think block), exactly what `max_length` is compared
against, and each prompt hits its target length to the token where the
tokenizer allows (the tolerance is `LENGTH_TOLERANCE`).

Constructions (the seed's prompt_construction, plus two for Q5.5):
    front_heavy: every element in the first ~500 tokens, filler after.
    back_heavy: every element in the last ~500 tokens, filler before.
    distributed: elements spread evenly over the whole prompt.
    repetitive: the same elements mentioned again and again, every `repeat_every` tokens.
    structured_list: distributed, written as a "- item" list, one sentence per line.
    structured_json: distributed, written as JSON, {"scene": ["sentence", ...]}.
"""

from __future__ import annotations

import bisect
import copy
import functools
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llm_dit.encoding.template import render_chat_text
from llm_dit.encoding.prompt_spec import PromptSpec
from llm_dit.models.tiny import load_bundled_tokenizer

GENERATOR_KINDS = ("long_prompt",)
CONSTRUCTIONS = ("front_heavy", "back_heavy", "distributed", "repetitive")
STRUCTURED = ("structured_list", "structured_json")  # Q5.5: lists and JSON
ALL_CONSTRUCTIONS = CONSTRUCTIONS + STRUCTURED
DEFAULT_LENGTHS = (1024, 1280, 1536, 2048, 3072)
DEFAULT_ELEMENTS = ("a red cat", "a blue dog", "a green bird", "a yellow umbrella", "a silver clock")
KEY_REGION_TOKENS = 500  # "key details in the first / last 500 tokens"
REGION_MARGIN = 32  # keeps elements clear of the template and of the region's edge
LENGTH_TOLERANCE = 3
WORD_FILL_TOKENS = 24  # the last stretch is filled word by word
USER_PREFIX = "<|im_start|>user\n"  # the chat text before the prompt (see encoding.template)

ELEMENT_SENTENCES = (
    "In the scene there is {element}.",
    "The picture clearly shows {element}.",
    "One can plainly see {element} here.",
    "The image also includes {element}.",
    "Easy to spot in the view is {element}.",
)

# Neutral filler: describes light, space and mood, never an object or a colour
# that a content metric could confuse with a key element.
FILLER_SENTENCES = (
    "The scene is calm and quiet.",
    "Soft daylight falls evenly across the whole view.",
    "The ground is level and the air is still.",
    "Everything in the picture is in sharp focus.",
    "The composition is balanced, with plenty of open space.",
    "Light shadows stretch gently across the ground.",
    "The background fades softly into the distance.",
    "The atmosphere feels peaceful and unhurried.",
    "The lighting is natural and even, without harsh contrast.",
    "The space feels open and uncluttered.",
    "The view is seen from a comfortable eye level.",
    "The edges of the frame are clean and simple.",
    "Nothing in the scene moves quickly.",
    "The air is clear, and the distance is easy to read.",
    "The perspective is straightforward and steady.",
    "Gentle light gives every surface a soft texture.",
    "The overall mood is relaxed and pleasant.",
    "The depth of the scene is shallow near the edges.",
    "There is a quiet sense of order in the arrangement.",
    "The horizon sits slightly below the middle of the frame.",
    "The light seems to come from high above.",
    "Surfaces reflect the light only faintly.",
    "The scene has a timeless, ordinary feel.",
    "The camera is held level and steady.",
    "The framing leaves a little room on every side.",
    "The tones shift smoothly from near to far.",
    "It is a still moment in the middle of the day.",
    "The details are crisp but not overwhelming.",
    "The scene is simple and easy to take in.",
    "Small changes in light give the ground some shape.",
    "The setting is spacious and calm.",
    "The contrast is moderate and pleasant to the eye.",
)


@dataclass(frozen=True)
class Mention:
    """One planned mention: element index and the token position it should start near."""

    element: int
    target: int


@dataclass(frozen=True)
class Layout:
    """How sentences become prompt text: `join` renders them, `piece` is what one
    sentence adds (for planning by summed token counts)."""

    join: Callable[[list[str]], str]
    piece: Callable[[str], str]


LAYOUTS = {
    "prose": Layout(lambda sentences: " ".join(sentences), lambda sentence: " " + sentence),
    "list": Layout(lambda sentences: "\n".join(f"- {s}" for s in sentences), lambda sentence: f"\n- {sentence}"),
    "json": Layout(lambda sentences: json.dumps({"scene": sentences}), lambda sentence: f' "{sentence}",'),
}


def layout_of(construction: str) -> Layout:
    return LAYOUTS[{"structured_list": "list", "structured_json": "json"}.get(construction, "prose")]


# ----- public API ------------------------------------------------------------------------------


def generate_prompts(
    kind: str = "long_prompt",
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    constructions: Sequence[str] = CONSTRUCTIONS,
    elements: Sequence[str] | None = None,
    tokenizer: Any = None,
    seed: int = 0,
    repeat_every: int = 64,
) -> list[PromptSpec]:
    """One prompt per (length, construction), length-major, deterministic given `seed`.

    Args:
        kind: generator name (the `prompt_generator.kind` of a study); only "long_prompt".
        lengths: target lengths in Qwen3 tokens of the full chat template.
        constructions: which of ALL_CONSTRUCTIONS to build (default: the seed's four).
        elements: key elements, e.g. ["a red cat", ...]; default DEFAULT_ELEMENTS.
        tokenizer: a fast Qwen3 tokenizer; default the bundled one (same as Z-Image-Turbo's).
        seed: picks filler and element sentences.
        repeat_every: spacing in tokens of the mentions of a "repetitive" prompt.

    Each PromptSpec has type = construction and metadata: construction, target_tokens,
    num_tokens, elements, element_token_positions (start token of each element's
    first mention, in template tokens), element_token_spans ([start, end) of that
    mention), element_mentions (start token of every mention, per element) and
    key_region ([start, end) tokens the elements were planned in).
    """
    elements = _checked(kind, lengths, constructions, elements, repeat_every)
    if tokenizer is None:
        # Studies resolve their prompts several times (validate, items, record): build once.
        cached = _generate_with_bundled_tokenizer(tuple(lengths), tuple(constructions), tuple(elements), seed, repeat_every)
        return [PromptSpec(p.text, p.type, copy.deepcopy(p.metadata)) for p in cached]
    counter = _SentenceCounter(tokenizer)
    prompts = []
    for length in lengths:
        for construction in constructions:
            rng = random.Random(f"{seed}/{construction}/{length}")
            prompts.append(build_long_prompt(int(length), construction, elements, counter, rng, repeat_every))
    return prompts


@functools.lru_cache(maxsize=8)
def _generate_with_bundled_tokenizer(
    lengths: tuple[int, ...], constructions: tuple[str, ...], elements: tuple[str, ...], seed: int, repeat_every: int
) -> tuple[PromptSpec, ...]:
    prompts = generate_prompts("long_prompt", lengths, constructions, elements, load_bundled_tokenizer(), seed, repeat_every)
    return tuple(prompts)


def build_long_prompt(
    length: int,
    construction: str,
    elements: Sequence[str],
    counter: _SentenceCounter,
    rng: random.Random,
    repeat_every: int = 64,
) -> PromptSpec:
    """One prompt of `length` template tokens with `elements` placed as `construction` says."""
    tokenizer = counter.tokenizer
    layout = layout_of(construction)
    budget = length - counter.template_overhead
    plan = plan_mentions(length, construction, len(elements), repeat_every)
    sentences = _place(plan, elements, budget, counter, layout, rng)
    text = _fill_to_length(sentences, length, counter, layout, rng)
    positions = locate(text, elements, tokenizer)
    num_tokens = len(chat_token_offsets(text, tokenizer))
    if abs(num_tokens - length) > LENGTH_TOLERANCE:
        raise RuntimeError(f"long prompt reached {num_tokens} tokens instead of {length}; please report this")
    region = key_region(length, construction)
    return PromptSpec(
        text=text,
        type=construction,
        metadata={
            "construction": construction,
            "target_tokens": length,
            "num_tokens": num_tokens,
            "elements": list(elements),
            "element_token_positions": [spans[0][0] for spans in positions],
            "element_token_spans": [list(spans[0]) for spans in positions],
            "element_mentions": [[start for start, _ in spans] for spans in positions],
            "key_region": list(region),
        },
    )


def key_region(length: int, construction: str) -> tuple[int, int]:
    """[start, end) template tokens the elements are planned in."""
    if construction == "front_heavy":
        return REGION_MARGIN, min(KEY_REGION_TOKENS, length) - REGION_MARGIN
    if construction == "back_heavy":
        return max(0, length - KEY_REGION_TOKENS) + REGION_MARGIN, length - REGION_MARGIN
    return REGION_MARGIN, length - REGION_MARGIN


def plan_mentions(length: int, construction: str, count: int, repeat_every: int = 64) -> list[Mention]:
    """Where each mention should start, in template tokens, in order."""
    start, end = key_region(length, construction)
    if construction == "repetitive":
        return [Mention(j % count, start + j * repeat_every) for j in range((end - start) // repeat_every)]
    step = (end - start) / count
    return [Mention(index, int(start + index * step)) for index in range(count)]


def locate(text: str, elements: Sequence[str], tokenizer: Any) -> list[list[tuple[int, int]]]:
    """Per element, the [start, end) template-token span of every mention in `text`, in order."""
    offsets = chat_token_offsets(text, tokenizer)
    ends = [end for _, end in offsets]  # non-decreasing: tokens come in text order
    shift = len(USER_PREFIX)
    found = []
    for element in elements:
        spans = []
        at = text.find(element)
        while at >= 0:
            first, last = shift + at, shift + at + len(element)
            start = bisect.bisect_right(ends, first)  # first token ending after the element starts
            stop = bisect.bisect_left(ends, last) + 1  # first token reaching the element's end, inclusive
            spans.append((start, stop))
            at = text.find(element, at + len(element))
        if not spans:
            raise RuntimeError(f"element {element!r} did not make it into the prompt; please report this")
        found.append(spans)
    return found


def chat_token_offsets(text: str, tokenizer: Any) -> list[tuple[int, int]]:
    """Character span in the chat text of every template token of prompt `text`."""
    encoded = tokenizer(render_chat_text(text), return_offsets_mapping=True)  # as encoding.template does
    return [tuple(span) for span in encoded["offset_mapping"]]


# ----- building ----------------------------------------------------------------------------


class _SentenceCounter:
    """Token counts of prompt pieces (" sentence", "\n- sentence"), cached: tokens add up
    across pieces (the pre-tokenizer splits before a space- or newline-led word), so a
    prompt is planned by sums and measured exactly only a few times."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.template_overhead = len(chat_token_offsets("", tokenizer))
        self.prefix = len(tokenizer(USER_PREFIX)["input_ids"])  # template tokens before the prompt
        self._cache: dict[str, int] = {}

    def measure(self, text: str) -> int:
        """Exact template tokens of prompt `text`."""
        return len(chat_token_offsets(text, self.tokenizer))

    def __call__(self, piece: str) -> int:
        """Tokens of `piece` on its own (pieces carry their leading space or newline)."""
        if piece not in self._cache:
            self._cache[piece] = len(self.tokenizer(piece, add_special_tokens=False)["input_ids"])
        return self._cache[piece]


class _Filler:
    """Filler sentences in a seeded order that runs through the whole pool before repeating."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.queue: list[str] = []

    def next(self) -> str:
        if not self.queue:
            self.queue = list(FILLER_SENTENCES)
            self.rng.shuffle(self.queue)
        return self.queue.pop()


def _place(
    plan: list[Mention], elements: Sequence[str], budget: int, counter: _SentenceCounter, layout: Layout, rng: random.Random
) -> list[str]:
    """Filler up to each mention's target, then the mention: a mention starts at or a little before its target."""
    filler = _Filler(rng)
    sentences: list[str] = []
    used = counter(layout.join([]))  # tokens of the prompt so far (a JSON layout has an opening)
    for mention in plan:
        sentence = rng.choice(ELEMENT_SENTENCES).format(element=elements[mention.element])
        while True:
            candidate = filler.next()
            if counter.prefix + used + counter(layout.piece(candidate)) > mention.target:
                filler.queue.append(candidate)  # keep it for later: the order stays seeded
                break
            sentences.append(candidate)
            used += counter(layout.piece(candidate))
        if used + counter(layout.piece(sentence)) > budget:
            break
        sentences.append(sentence)
        used += counter(layout.piece(sentence))
    return sentences


def _fill_to_length(
    sentences: list[str], length: int, counter: _SentenceCounter, layout: Layout, rng: random.Random
) -> str:
    """Add filler sentences, then filler words (as one last unfinished sentence), until the
    prompt is `length` tokens long. Planned sums are only close (".\n" can merge into one
    token), so every round measures the real chat tokens and plans the remaining gap."""
    filler = _Filler(rng)
    tail: list[str] = []
    render = lambda: layout.join(sentences + ([" ".join(tail)] if tail else []))  # noqa: E731
    measured = counter.measure(render())
    while length - measured > WORD_FILL_TOKENS:
        gap = length - measured - LENGTH_TOLERANCE
        while gap > 0:
            candidate = filler.next()
            if counter(layout.piece(candidate)) > gap:
                break
            sentences.append(candidate)
            gap -= counter(layout.piece(candidate))
        longer = counter.measure(render())
        if longer == measured:
            break
        measured = longer
    words = _Words(filler, counter)
    one_by_one = False  # after an overshoot, words go in singly
    while measured < length:
        batch = words.take(1 if one_by_one else length - measured)
        tail += batch
        longer = counter.measure(render())
        if longer <= length:
            measured = longer
            continue
        del tail[-len(batch):]
        if one_by_one:
            break
        one_by_one = True
    if measured < length and tail:
        tail[-1] += "."  # one token short is common: a full stop usually closes the gap
        if counter.measure(render()) > length:
            tail[-1] = tail[-1][:-1]
    return render()


class _Words:
    """Filler words in reading order, continuing across calls, so the tail reads as prose."""

    def __init__(self, filler: _Filler, counter: _SentenceCounter) -> None:
        self.filler, self.counter, self.pending = filler, counter, []

    def take(self, gap: int) -> list[str]:
        """Words whose planned tokens fill `gap` (at least one word)."""
        words: list[str] = []
        while True:
            if not self.pending:
                self.pending = self.filler.next().split()
            cost = self.counter(" " + self.pending[0])
            if words and cost > gap:
                return words
            words.append(self.pending.pop(0))
            gap -= cost
            if gap <= 0:
                return words


def _checked(
    kind: str, lengths: Sequence[int], constructions: Sequence[str], elements: Sequence[str] | None, repeat_every: int
) -> list[str]:
    """Validate the generator's arguments; return the element list."""
    if kind not in GENERATOR_KINDS:
        raise ValueError(f"unknown prompt_generator kind {kind!r}; choose one of {', '.join(GENERATOR_KINDS)}")
    unknown = [c for c in constructions if c not in ALL_CONSTRUCTIONS]
    if unknown or not constructions:
        raise ValueError(f"unknown or no constructions {unknown}; choose from {', '.join(ALL_CONSTRUCTIONS)}")
    elements = list(DEFAULT_ELEMENTS if elements is None else elements)
    if not elements or any(not isinstance(e, str) or not e.strip() for e in elements):
        raise ValueError(f"elements must be non-empty strings, got {elements!r}")
    if repeat_every < 16:
        raise ValueError(f"repeat_every must be >= 16 tokens (room for one mention), got {repeat_every}")
    minimum = KEY_REGION_TOKENS
    for length in lengths:
        if int(length) < minimum:
            raise ValueError(f"long-prompt length {length} is below {minimum} tokens; these prompts are meant to be long")
    return elements
