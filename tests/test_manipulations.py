"""Token-importance manipulations on the seed's own prompts, checked with the real tagger."""

from __future__ import annotations

from collections import Counter

import pytest

from llm_dit.encoding import manipulations
from llm_dit.encoding.manipulations import (
    ADJECTIVE_TAGS,
    NOUN_TAGS,
    TRANSFORMS,
    POSTaggerUnavailable,
    get_prompt_transform,
    tag,
)

CAT = "A fluffy orange cat sleeping on a velvet red couch"
CASTLE = "An ancient stone castle on a misty green hillside"
SEED_PROMPTS = (CAT, CASTLE)


@pytest.fixture(scope="module", autouse=True)
def tagger():
    """Load spaCy once for the module (about a second)."""
    return manipulations.load_tagger(manipulations.spacy_model_name())


def words_tagged(text: str, tags: frozenset[str]) -> list[str]:
    return [word for word, _, pos in tag(text) if pos in tags]


def apply(name: str, text: str, seed: int = 0) -> str:
    return get_prompt_transform(name)(text, seed=seed)


def test_every_seed_manipulation_is_registered():
    assert list(TRANSFORMS) == [
        "baseline", "shuffle_all", "shuffle_nouns", "duplicate_important",
        "front_load", "back_load", "remove_adjectives", "remove_nouns",
        "shuffle_adjectives",  # the colour-binding positive control (tests/test_positive_controls.py)
    ]


@pytest.mark.parametrize("prompt", SEED_PROMPTS)
def test_baseline_is_identity(prompt):
    assert apply("baseline", prompt) == prompt


@pytest.mark.parametrize("prompt", SEED_PROMPTS)
def test_remove_adjectives_leaves_no_adjective(prompt):
    result = apply("remove_adjectives", prompt)
    assert words_tagged(result, ADJECTIVE_TAGS) == []
    for noun in words_tagged(prompt, NOUN_TAGS):
        assert noun in result.split()
    assert result[0].isupper()


def test_remove_adjectives_fixes_the_article():
    assert apply("remove_adjectives", CASTLE) == "A stone castle on a hillside"
    assert apply("remove_adjectives", CAT) == "A cat sleeping on a couch"


@pytest.mark.parametrize("prompt", SEED_PROMPTS)
def test_remove_nouns_leaves_no_noun_and_keeps_adjectives(prompt):
    result = apply("remove_nouns", prompt)
    adjectives = words_tagged(prompt, ADJECTIVE_TAGS)
    for noun in words_tagged(prompt, NOUN_TAGS):
        assert noun not in result.split()
    # Without their nouns, adjectives may be re-read as nouns; those are the words
    # this condition keeps on purpose, so they are the only nouns allowed.
    assert set(words_tagged(result, NOUN_TAGS)) <= set(adjectives)
    assert [w for w in result.split() if w in adjectives] == adjectives


@pytest.mark.parametrize("prompt", SEED_PROMPTS)
def test_shuffle_nouns_moves_only_nouns(prompt):
    before = tag(prompt)
    result = apply("shuffle_nouns", prompt, seed=3)
    after = tag(result)
    assert len(after) == len(before)
    noun_slots = [i for i, (_, _, pos) in enumerate(before) if pos in NOUN_TAGS]
    for i, (word, _, _) in enumerate(before):
        if i not in noun_slots:
            assert after[i][0] == word
    assert Counter(after[i][0] for i in noun_slots) == Counter(before[i][0] for i in noun_slots)
    assert result != prompt


@pytest.mark.parametrize("prompt", SEED_PROMPTS)
def test_shuffle_all_is_a_seeded_permutation(prompt):
    first = apply("shuffle_all", prompt, seed=7)
    assert sorted(first.split()) == sorted(prompt.split())
    assert first != prompt
    assert apply("shuffle_all", prompt, seed=7) == first
    others = {apply("shuffle_all", prompt, seed=s) for s in range(5)}
    assert len(others) > 1


def test_shuffle_keeps_punctuation_as_tokens():
    prompt = "Portrait of an elderly woman, studio lighting"
    result = apply("shuffle_all", prompt, seed=1)
    assert sorted(result.split()) == sorted(w for w, _, _ in tag(prompt))


@pytest.mark.parametrize("prompt", SEED_PROMPTS)
def test_front_load_and_back_load_move_the_descriptors(prompt):
    adjectives = words_tagged(prompt, ADJECTIVE_TAGS)
    front = apply("front_load", prompt).split()
    back = apply("back_load", prompt).split()
    assert front[: len(adjectives)] == adjectives
    assert back[-len(adjectives):] == adjectives
    # Only positions change: the same words, nothing added or dropped.
    assert sorted(front) == sorted(prompt.split()) == sorted(back)


def test_front_and_back_load_take_adverbs_and_joiners_along():
    prompt = "A very bright, shiny red ball on the floor."
    assert apply("front_load", prompt) == "very bright, shiny red A ball on the floor."
    assert apply("back_load", prompt) == "A ball on the floor very bright, shiny red."


@pytest.mark.parametrize("prompt", SEED_PROMPTS)
def test_duplicate_important_repeats_each_adjective(prompt):
    result = apply("duplicate_important", prompt).split()
    for adjective in words_tagged(prompt, ADJECTIVE_TAGS):
        at = result.index(adjective)
        assert result[at + 1] == adjective
    assert len(result) == len(prompt.split()) + len(words_tagged(prompt, ADJECTIVE_TAGS))


def test_duplicate_important_falls_back_to_nouns():
    prompt = "Cyberpunk cityscape at night"
    assert words_tagged(prompt, ADJECTIVE_TAGS) == []
    assert apply("duplicate_important", prompt) != prompt


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="shuffle_nouns"):
        get_prompt_transform("shuffle_verbs")


def test_model_suffix_and_settings(monkeypatch):
    named = get_prompt_transform(f"remove_adjectives@{manipulations.DEFAULT_SPACY_MODEL}")
    assert named(CAT, seed=0) == apply("remove_adjectives", CAT)
    monkeypatch.setenv(manipulations.SPACY_MODEL_ENV, "from_env")
    assert manipulations.spacy_model_name() == "from_env"
    manipulations.set_spacy_model("from_setter")
    try:
        assert manipulations.spacy_model_name() == "from_setter"
    finally:
        manipulations.set_spacy_model(None)
    monkeypatch.delenv(manipulations.SPACY_MODEL_ENV)
    assert manipulations.spacy_model_name() == manipulations.DEFAULT_SPACY_MODEL


def test_missing_spacy_says_how_to_install(monkeypatch):
    real = manipulations.importlib.util.find_spec
    monkeypatch.setattr(
        manipulations.importlib.util, "find_spec", lambda name, *a: None if name == "spacy" else real(name, *a)
    )
    with pytest.raises(POSTaggerUnavailable, match=r"pip install 'llm-dit\[pos\]'"):
        get_prompt_transform("remove_nouns")
    assert get_prompt_transform("baseline")("x", seed=0) == "x"  # the control needs no tagger


def test_missing_model_says_how_to_install():
    with pytest.raises(POSTaggerUnavailable, match=r"llm-dit\[pos\].*LLM_DIT_SPACY_MODEL"):
        manipulations.load_tagger("no_such_spacy_model_xyz")


def test_study_applies_transforms_with_stable_seeds():
    from llm_dit.study import Study

    study = Study(
        name="t", kind="token_importance", prompts=[CAT, CASTLE], control="baseline",
        conditions=[{"name": n, "prompt_transform": n} for n in TRANSFORMS],
    )
    items = study.items()
    assert {item.condition for item in items} == set(TRANSFORMS)
    for item in items:
        assert item.original_prompt in SEED_PROMPTS
        assert (item.prompt == item.original_prompt) == (item.condition == "baseline")
    assert [i.prompt for i in study.items()] == [i.prompt for i in items]
