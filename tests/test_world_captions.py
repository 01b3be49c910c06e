"""World captions and the caption parser: every form reads back to the facts it was written from."""

from __future__ import annotations

import numpy as np
import pytest

from llm_dit.world import vocabulary
from llm_dit.world.captions import (
    FORMS,
    PLACEMENTS,
    _FILLER_ENDINGS,
    _FILLER_OBJECTS,
    _FILLER_SUBJECTS,
    _FILLER_VERBS,
    _sentence_list,
    caption,
    caption_with_facts,
    key_token_spans,
    long_prompt,
    training_caption,
)
from llm_dit.world.facts import Facts, ObjectFact, RelationFact
from llm_dit.world.parse import expected_facts, tokens
from llm_dit.world.scene import sample_scene
from llm_dit.world.score import score_scene

SCENES = [sample_scene(i, n_objects=(i % 4) + 1, repeat=1 if i % 4 else 0) for i in range(200)]


@pytest.mark.parametrize("form", FORMS)
def test_parser_reads_back_the_facts_each_form_states(form):
    rng = np.random.default_rng(0)
    for scene in SCENES:
        text, stated = caption_with_facts(scene, rng, form)
        assert expected_facts(text) == stated, text


@pytest.mark.parametrize("form", FORMS)
def test_every_caption_is_true_of_its_scene(form):
    rng = np.random.default_rng(1)
    for scene in SCENES:
        score = score_scene(scene, caption(scene, rng, form))
        assert score.results and score.all_hold, caption(scene, 0, form)


def test_training_captions_use_several_forms_and_synonyms():
    rng = np.random.default_rng(2)
    texts = [training_caption(SCENES[i % len(SCENES)], rng) for i in range(300)]
    assert sum(t.startswith("{") for t in texts) > 10 and sum(t.startswith("Objects:") for t in texts) > 10
    words = {w for t in texts for w in tokens(t)}
    assert {"disc", "box", "big", "little", "grey", "stripy"} & words == {"disc", "box", "big", "little", "grey", "stripy"}


def test_hand_written_prompts():
    facts = expected_facts("Two red circles and a big blue square with dots in the top-left on a grey background.")
    assert facts == Facts(
        (ObjectFact("circle", "red", count=2), ObjectFact("square", "blue", "large", "dotted", 0, 0)), (), "gray"
    )
    relation = expected_facts("a small green star to the left of a yellow cross")
    assert relation.relations == (RelationFact(0, "left_of", 1),)
    position = expected_facts("a red circle in the top left of the frame").objects[0]
    assert (position.row, position.col) == (0, 0) and not expected_facts("a red circle in the top left of the frame").relations
    assert expected_facts("A cat sleeping on a couch").empty
    assert expected_facts("red large striped").empty  # adjectives without a noun assert nothing
    middle = expected_facts("a star in the middle left, a disc at the bottom center, a box in the centre").objects
    assert [(o.row, o.col) for o in middle] == [(1, 0), (2, 1), (1, 1)]


def test_filler_uses_no_world_word():
    world = vocabulary.ALL_WORDS - set(vocabulary.ARTICLES) | {"stripes", "dots", "spots"}  # "of" / "with" only matter next to these
    for piece in (*_FILLER_SUBJECTS, *_FILLER_VERBS, *_FILLER_OBJECTS, *_FILLER_ENDINGS):
        assert not set(tokens(piece)) & world, piece


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_long_prompt_places_key_sentences_and_keeps_their_facts(placement):
    words = lambda text: len(text.split())  # noqa: E731  a stand-in token counter
    scene = SCENES[3]
    text = long_prompt(scene, 5, 400, placement, count_tokens=words)
    key, facts = _sentence_list(scene, np.random.default_rng(5))
    assert 400 <= words(text) <= 400 + 15
    assert expected_facts(text) == facts
    sentences = [s.strip() + "." for s in text.split(".") if s.strip()]
    positions = [i for i, s in enumerate(sentences) if s in key]
    assert len(positions) == len(key) * (3 if placement == "repeated" else 1)
    if placement == "front":
        assert positions == list(range(len(key)))
    elif placement == "back":
        assert positions == list(range(len(sentences) - len(key), len(sentences)))
    elif placement == "distributed":
        assert positions[0] == 0 and positions[-1] == len(sentences) - 1 and max(np.diff(positions)) > 5


def test_long_prompt_counts_qwen_tokens_by_default():
    from llm_dit.models.tiny import bundled_tokenizer_dir  # the same tokenizer file the pipeline uses
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bundled_tokenizer_dir() / "tokenizer.json"))
    text = long_prompt(SCENES[4], 0, 300, "front")
    assert 300 <= len(tokenizer.encode(text, add_special_tokens=False).ids) <= 330


@pytest.mark.parametrize("placement", ["front", "back"])
def test_key_token_spans_locate_the_fact_sentences(placement):
    from llm_dit.models.tiny import bundled_tokenizer_dir
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bundled_tokenizer_dir() / "tokenizer.json"))
    scene = SCENES[6]
    text = long_prompt(scene, 1, 200, placement)
    spans = key_token_spans(text)
    encoding = tokenizer.encode(text, add_special_tokens=False)
    assert len(spans) == len(scene.objects) + 1  # one sentence per object + the background
    if placement == "front":
        assert spans[0][0] == 0
    else:
        assert spans[-1][1] == len(encoding.ids)
    first = text[encoding.offsets[spans[0][0]][0] : encoding.offsets[spans[0][1] - 1][1]]
    assert expected_facts(first).objects or expected_facts(first).background


def test_token_manipulations_change_facts_in_known_ways():
    manipulations = pytest.importorskip("llm_dit.encoding.manipulations")
    text = caption(SCENES[10], 0, "plain")
    try:
        no_nouns = manipulations.remove_nouns(text)
        no_adjectives = manipulations.remove_adjectives(text)
    except manipulations.POSTaggerUnavailable as error:
        pytest.skip(str(error))
    original = expected_facts(text)
    assert not expected_facts(no_nouns).objects  # shapes are the nouns
    stripped = expected_facts(no_adjectives)
    assert {o.shape for o in stripped.objects} == {o.shape for o in original.objects}  # identical phrases merge
    # Colours and sizes are adjectives; the tagger may keep a few it reads otherwise ("spotted" as a verb),
    # which is why scores of manipulated prompts use expected_facts of the text actually encoded.
    stated = lambda facts: sum(getattr(o, k) is not None for o in facts.objects for k in ("colour", "size", "style"))  # noqa: E731
    assert stated(stripped) < stated(original) / 2
