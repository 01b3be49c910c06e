"""Long-prompt generator: exact lengths, elements where the metadata says, determinism."""

from __future__ import annotations

import pytest

from llm_dit.encoding.long_prompt_generator import (
    ALL_CONSTRUCTIONS,
    DEFAULT_ELEMENTS,
    KEY_REGION_TOKENS,
    LENGTH_TOLERANCE,
    generate_prompts,
)
from llm_dit.encoding.template import tokenize_chat

LENGTHS = (1024, 2048)


@pytest.fixture(scope="module")
def tokenizer():
    from llm_dit.models import load_bundled_tokenizer

    return load_bundled_tokenizer()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return generate_prompts(lengths=LENGTHS, constructions=ALL_CONSTRUCTIONS, tokenizer=tokenizer)


def test_one_prompt_per_length_and_construction(prompts):
    assert [(p.metadata["target_tokens"], p.type) for p in prompts] == [
        (length, construction) for length in LENGTHS for construction in ALL_CONSTRUCTIONS
    ]
    for prompt in prompts:
        assert prompt.metadata["construction"] == prompt.type
        assert prompt.metadata["elements"] == list(DEFAULT_ELEMENTS)


def test_lengths_hit_the_target(prompts, tokenizer):
    for prompt in prompts:
        templated = tokenize_chat(prompt.text, tokenizer)  # what the encoder tokenizes
        assert abs(len(templated) - prompt.metadata["target_tokens"]) <= LENGTH_TOLERANCE
        assert len(templated) == prompt.metadata["num_tokens"]


def test_elements_sit_at_the_claimed_tokens(prompts, tokenizer):
    for prompt in prompts:
        ids = tokenize_chat(prompt.text, tokenizer).token_ids
        meta = prompt.metadata
        for element, (start, end), first, mentions in zip(
            meta["elements"], meta["element_token_spans"], meta["element_token_positions"], meta["element_mentions"]
        ):
            assert tokenizer.decode(ids[start:end]).strip() == element
            assert first == start == mentions[0]
            for position in mentions:
                assert tokenizer.decode(ids[position : position + end - start]).strip() == element


def test_constructions_place_elements_as_named(prompts):
    for prompt in prompts:
        meta, length = prompt.metadata, prompt.metadata["target_tokens"]
        positions = meta["element_token_positions"]
        ends = [end for _, end in meta["element_token_spans"]]
        if prompt.type == "front_heavy":
            assert max(ends) <= KEY_REGION_TOKENS
        elif prompt.type == "back_heavy":
            assert min(positions) >= length - KEY_REGION_TOKENS
        elif prompt.type == "repetitive":
            assert all(len(m) >= 2 for m in meta["element_mentions"])
        else:  # distributed and the structured layouts spread the elements over the whole prompt
            assert positions[0] < length / 4 and positions[-1] > length / 2
        assert positions == sorted(positions) or prompt.type == "repetitive"


def test_back_heavy_elements_lie_beyond_the_truncation_window(prompts):
    """What makes the study informative: at 2048 tokens, truncation to 1024 loses every back-heavy element."""
    back = next(p for p in prompts if p.type == "back_heavy" and p.metadata["target_tokens"] == 2048)
    assert min(back.metadata["element_token_positions"]) >= 1024


def test_structured_layouts(prompts):
    import json

    listing = next(p for p in prompts if p.type == "structured_list")
    assert all(line.startswith("- ") for line in listing.text.splitlines())
    document = next(p for p in prompts if p.type == "structured_json")
    assert isinstance(json.loads(document.text)["scene"], list)


def test_deterministic_given_seed(tokenizer):
    first = generate_prompts(lengths=[1024], constructions=["distributed"], tokenizer=tokenizer, seed=0)
    again = generate_prompts(lengths=[1024], constructions=["distributed"], tokenizer=tokenizer, seed=0)
    other = generate_prompts(lengths=[1024], constructions=["distributed"], tokenizer=tokenizer, seed=1)
    assert first[0].text == again[0].text and first[0].metadata == again[0].metadata
    assert other[0].text != first[0].text


def test_default_tokenizer_is_cached_and_copies(tokenizer):
    explicit = generate_prompts(lengths=[1024], constructions=["front_heavy"], tokenizer=tokenizer)
    cached = generate_prompts(lengths=[1024], constructions=["front_heavy"])
    assert cached[0].text == explicit[0].text
    cached[0].metadata["elements"].append("mutated")
    assert generate_prompts(lengths=[1024], constructions=["front_heavy"])[0].metadata["elements"] == list(DEFAULT_ELEMENTS)


def test_custom_elements(tokenizer):
    prompt = generate_prompts(lengths=[1024], constructions=["distributed"], elements=["a tiny robot"], tokenizer=tokenizer)[0]
    assert prompt.metadata["elements"] == ["a tiny robot"] and "a tiny robot" in prompt.text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "short_prompt"}, "long_prompt"),
        ({"constructions": ["middle_heavy"]}, "front_heavy"),
        ({"lengths": [100]}, "below"),
        ({"elements": [""]}, "non-empty"),
    ],
)
def test_bad_arguments_are_user_errors(kwargs, message, tokenizer):
    with pytest.raises(ValueError, match=message):
        generate_prompts(tokenizer=tokenizer, **kwargs)


def test_study_uses_the_generator():
    from llm_dit.study import Study

    study = Study(
        name="lp", kind="long_prompt", prompt_generator={"kind": "long_prompt", "lengths": [1024], "constructions": ["front_heavy"]},
        encoding={"max_length": 1024}, control="truncate",
    )
    items = study.items()
    assert len(items) == 1 and items[0].metadata["target_tokens"] == 1024 and items[0].prompt_type == "front_heavy"
