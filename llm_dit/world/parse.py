"""Prompt text -> the facts it asserts about the world (``expected_facts``).

One reader for every caption form (plain, sentences, counted, relation, list,
JSON, long prompts with filler) and for prompts mangled by the token-importance
manipulations (shuffled, nouns or adjectives removed): it reads words, not
layout. Rules:

* a noun phrase is [number | article] then any size / colour / style words,
  then a shape noun; adjectives with no noun after them assert nothing;
* after the noun, within a few unknown words: "with stripes/dots" (style), a
  run of position words ("top left", "middle", "bottom center": a centre word
  completes whichever of row / column is missing), or a relation ("to the left
  of", "above", ...) binding this phrase to the next one;
* a number word asserts an exact count; "a"/"an" and plurals assert presence;
* a background colour word within three words of "background"/"backdrop";
* unknown words are ignored; identical noun phrases are merged.
"""

from __future__ import annotations

import re

from llm_dit.world import vocabulary as v
from llm_dit.world.facts import Facts, ObjectFact, RelationFact

# Unknown words allowed between a noun and its position / relation / style phrase.
TRAILING_WINDOW = 4
BACKGROUND_WINDOW = 3
_TOKEN = re.compile(r"[a-z]+|\d+")
_NOUN_PHRASE_START = set(v.NUMBER_WORDS) | set(v.ARTICLES) | set(v.SIZE_OF) | set(v.COLOUR_OF) | set(v.STYLE_OF)
_POSITION = set(v.ROW_WORDS) | set(v.COL_WORDS) | set(v.CENTRE_WORDS)
_STOP = _NOUN_PHRASE_START | set(v.SINGULAR_SHAPE) | set(v.PLURAL_SHAPE) | set(v.BACKGROUND_NOUNS) | set(v.BACKGROUND_OF)


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _background(words: list[str]) -> str | None:
    for i, word in enumerate(words):
        if word in v.BACKGROUND_NOUNS:
            for distance in range(1, BACKGROUND_WINDOW + 1):
                for j in (i - distance, i + distance):
                    if 0 <= j < len(words) and words[j] in v.BACKGROUND_OF:
                        return v.BACKGROUND_OF[words[j]]
    return None


def _position(run: list[str]) -> tuple[int | None, int | None]:
    row = next((v.ROW_WORDS[w] for w in run if w in v.ROW_WORDS), None)
    col = next((v.COL_WORDS[w] for w in run if w in v.COL_WORDS), None)
    if any(w in v.CENTRE_WORDS for w in run):
        if row is None and col is None:
            return 1, 1
        row, col = (1 if row is None else row), (1 if col is None else col)
    return row, col


def _trailing(words: list[str], j: int) -> tuple[int, dict[str, object], str | None]:
    """Read what follows a noun: (next index, attributes found, relation to the next noun phrase)."""
    found: dict[str, object] = {}
    unknown = 0
    while j < len(words) and unknown <= TRAILING_WINDOW:
        word = words[j]
        following = words[j + 1] if j + 1 < len(words) else ""
        if word == "with" and following in v.STYLE_NOUN_OF:
            found["style"] = v.STYLE_NOUN_OF[following]
            j, unknown = j + 2, 0
        elif word in v.SIDE_RELATIONS and following == "of":
            return j + 2, found, v.SIDE_RELATIONS[word]
        elif word in v.VERTICAL_RELATIONS:
            return j + 1, found, v.VERTICAL_RELATIONS[word]
        elif word in _POSITION and "row" not in found:
            run = []
            while j < len(words) and words[j] in _POSITION:
                run.append(words[j])
                j += 1
            found["row"], found["col"] = _position(run)
            unknown = 0
        elif word in _STOP:
            break
        else:
            j, unknown = j + 1, unknown + 1
    return j, found, None


def expected_facts(prompt: str) -> Facts:
    """The facts a world prompt asserts (see the module docstring for the rules)."""
    words = tokens(prompt)
    objects: list[ObjectFact] = []
    relations: list[RelationFact] = []
    pending: tuple[int, str] | None = None
    modifiers: dict[str, object] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word in v.NUMBER_WORDS:
            modifiers = {"count": v.NUMBER_WORDS[word]}
        elif word in v.ARTICLES:
            modifiers = {}
        elif word in v.SIZE_OF:
            modifiers["size"] = v.SIZE_OF[word]
        elif word in v.COLOUR_OF:
            modifiers["colour"] = v.COLOUR_OF[word]
        elif word in v.STYLE_OF:
            modifiers["style"] = v.STYLE_OF[word]
        elif word in v.SINGULAR_SHAPE or word in v.PLURAL_SHAPE:
            shape = v.SINGULAR_SHAPE.get(word) or v.PLURAL_SHAPE[word]
            i, trailing, relation = _trailing(words, i + 1)
            attributes = {**modifiers, **{k: val for k, val in trailing.items() if k != "style" or "style" not in modifiers}}
            fact = ObjectFact(shape=shape, **attributes)  # type: ignore[arg-type]
            if fact in objects:
                index = objects.index(fact)
            else:
                index = len(objects)
                objects.append(fact)
            if pending is not None:
                relations.append(RelationFact(pending[0], pending[1], index))
            pending = (index, relation) if relation else None
            modifiers = {}
            continue
        i += 1
    return Facts(objects=tuple(objects), relations=tuple(dict.fromkeys(relations)), background=_background(words))
