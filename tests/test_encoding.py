"""Encoding: chat template + segment labels, the encoder against diffusers, layers, mixes, long prompts.

All on the tiny preset (real Qwen3Model classes, the real Qwen3 tokenizer).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import ZImagePipeline

from llm_dit.encoding import (
    EncodingOptions,
    ZImageTextEncoder,
    build_pieces,
    combine_layers,
    fit_to_length,
    render_chat_text,
    tokenize_chat,
)
from llm_dit.encoding.compression import attention_pool, pool, pool_weights

PROMPTS = [
    "a cat",
    "A photorealistic red fox jumping over a lazy dog at golden hour, shallow depth of field",
    "",
]
# Prompts whose edges can merge with the template under byte-level BPE.
ODD_PROMPTS = ["\nstarts with a newline", "  leading spaces", "ends with newlines\n\n", "trailing ", "🐱 emoji🐱", "\n", " "]
LONG_PROMPT = " ".join(f"word{i} is here." for i in range(40))


@pytest.fixture(scope="module")
def encoder(tiny) -> ZImageTextEncoder:
    return ZImageTextEncoder(tiny.text_encoder, tiny.tokenizer)


@pytest.fixture(scope="module")
def unpadded(tiny) -> ZImageTextEncoder:
    return ZImageTextEncoder(tiny.text_encoder, tiny.tokenizer, padding="none")


@pytest.fixture(scope="module")
def pipe(tiny) -> ZImagePipeline:
    return ZImagePipeline(
        scheduler=tiny.scheduler, vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, transformer=tiny.transformer
    )


def diffusers_embeddings(pipe: ZImagePipeline, prompts: list[str], max_length: int = 512) -> list[torch.Tensor]:
    # encode_prompt rewrites the list it is given in place: pass a copy.
    embeds, _ = pipe.encode_prompt(list(prompts), device="cpu", do_classifier_free_guidance=False, max_sequence_length=max_length)
    return embeds


def full_hidden_states(tiny, text: str) -> tuple[torch.Tensor, ...]:
    ids = tiny.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return tiny.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states


# ----- template ----------------------------------------------------------------------


@pytest.mark.parametrize("prompt", PROMPTS + ODD_PROMPTS)
def test_default_and_forced_think_text_equal_the_tokenizer_template(tiny, prompt):
    messages = [{"role": "user", "content": prompt}]
    for thinking, options in ((True, EncodingOptions()), (False, EncodingOptions(force_think_block=True))):
        expected = tiny.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking)
        assert render_chat_text(prompt, options) == expected


def test_system_prompt_text_equals_the_tokenizer_template(tiny):
    messages = [{"role": "system", "content": "You draw."}, {"role": "user", "content": "a cat"}]
    expected = tiny.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_chat_text("a cat", EncodingOptions(system_prompt="You draw.")) == expected


def test_thinking_and_assistant_content_follow_qwen3s_assistant_turn(tiny):
    messages = [{"role": "user", "content": "a cat"}, {"role": "assistant", "content": "Here.", "reasoning_content": "Fur."}]
    full_turn = tiny.tokenizer.apply_chat_template(messages, tokenize=False)
    text = render_chat_text("a cat", EncodingOptions(thinking_content="Fur.", assistant_content="Here."))
    assert text == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n<think>\nFur.\n</think>\n\nHere."
    assert full_turn == text + "<|im_end|>\n"


@pytest.mark.parametrize("prompt", PROMPTS + ODD_PROMPTS + [LONG_PROMPT])
@pytest.mark.parametrize(
    "options",
    [EncodingOptions(), EncodingOptions(system_prompt="\nsys "), EncodingOptions(thinking_content=" hmm\n", assistant_content="\nok")],
)
def test_token_ids_equal_tokenizing_the_whole_text(tiny, prompt, options):
    templated = tokenize_chat(prompt, tiny.tokenizer, options)
    assert templated.token_ids == tiny.tokenizer(templated.text).input_ids
    assert len(templated.segments) == len(templated.token_ids)


def labelled_text(tiny, prompt: str, options: EncodingOptions) -> dict[str, str]:
    """Concatenated token text per segment label."""
    templated = tokenize_chat(prompt, tiny.tokenizer, options)
    texts: dict[str, str] = {}
    for token, label in zip(templated.token_ids, templated.segments):
        texts[label] = texts.get(label, "") + tiny.tokenizer.decode([token])
    return texts


def test_segment_labels_of_every_variant(tiny):
    options = EncodingOptions(system_prompt="Be bold.", thinking_content="Fur and whiskers.", assistant_content="Here it is.")
    # "." + "\n" is one BPE token: it straddles the think text and the template, and content wins.
    assert labelled_text(tiny, "a cat", options) == {
        "template": "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n<think>\n</think>\n\n",
        "system": "Be bold.",
        "user": "a cat",
        "think": "Fur and whiskers.\n",
        "assistant": "Here it is.",
    }
    forced = tokenize_chat("a cat", tiny.tokenizer, EncodingOptions(force_think_block=True))
    assert forced.segments == ["template"] * 3 + ["user"] * 2 + ["template"] * 9
    assert [label for label, _ in build_pieces("", EncodingOptions())] == ["template", "template", "template"]


def test_a_token_straddling_template_and_prompt_is_labelled_with_the_prompt(tiny):
    templated = tokenize_chat("\nhello", tiny.tokenizer)
    merged = templated.token_ids.index(tiny.tokenizer.convert_tokens_to_ids("ĊĊ"))  # "user\n" + "\n" -> one token
    assert templated.segments[merged] == "user"


# ----- encoder vs diffusers -------------------------------------------------------------


def test_default_embeddings_equal_diffusers_encode_prompt(encoder, pipe):
    for prompts in ([PROMPTS[0]], PROMPTS + ODD_PROMPTS[:2]):
        expected = diffusers_embeddings(pipe, prompts)
        encoded = encoder.encode(prompts)
        assert [e.embeddings.shape[0] for e in encoded] == [x.shape[0] for x in expected]
        assert all(torch.equal(e.embeddings, x) for e, x in zip(encoded, expected))


def test_unpadded_encoding_is_diffusers_up_to_rounding(unpadded, pipe):
    """Different GEMM shapes round differently: close, not bit-identical (see encoder docstring)."""
    for encoded, expected in zip(unpadded.encode(PROMPTS), diffusers_embeddings(pipe, PROMPTS)):
        torch.testing.assert_close(encoded.embeddings, expected, rtol=1e-5, atol=1e-6)


def test_encoded_prompt_metadata(encoder, tiny):
    encoded = encoder.encode(["a cat"])[0]
    assert encoded.text == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"
    assert encoded.tokens == ["<|im_start|>", "user", "\n", "a", " cat", "<|im_end|>", "\n", "<|im_start|>", "assistant", "\n"]
    assert encoded.token_ids.tolist() == tiny.tokenizer(encoded.text).input_ids
    assert encoded.num_tokens == 10 and not encoded.compressed
    assert encoded.row_segments == encoded.segments
    assert torch.equal(encoded.segment_rows("user"), encoded.embeddings[3:5])


# ----- hidden layers ------------------------------------------------------------------


@pytest.mark.parametrize("layer", [0, 1, 4, -2, -1])
def test_truncated_encoder_equals_the_full_models_hidden_state(unpadded, tiny, layer):
    encoded = unpadded.encode(["a cat on a mat"], hidden_layer=layer)[0]
    assert torch.equal(encoded.embeddings, full_hidden_states(tiny, encoded.text)[layer][0])


def test_layers_after_the_deepest_are_not_run_and_the_model_is_restored(encoder, tiny):
    model = tiny.text_encoder
    layers, norm = model.layers, model.norm
    calls = [0] * len(layers)
    handles = [layer.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1)) for i, layer in enumerate(layers)]
    try:
        encoder.encode(["a cat"], hidden_layer=3)
        assert calls == [1, 1, 1, 0, 0, 0, 0, 0]
        encoder.encode(["a cat"], hidden_layer=[1, -1])
        assert calls == [2, 2, 2, 1, 1, 1, 1, 1]
    finally:
        for handle in handles:
            handle.remove()
    assert model.layers is layers and model.norm is norm


def test_the_model_is_restored_when_the_forward_fails(encoder, tiny):
    model = tiny.text_encoder
    layers, norm = model.layers, model.norm

    def fail(*_):
        raise RuntimeError("boom")

    handle = layers[0].register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            encoder.encode(["a cat"], hidden_layer=2)
    finally:
        handle.remove()
    assert model.layers is layers and model.norm is norm and len(model.layers) == 8


def test_layer_mixes(unpadded, tiny):
    states = full_hidden_states(tiny, render_chat_text("a cat"))
    layers = [states[2][0], states[5][0]]
    mean = unpadded.encode(["a cat"], hidden_layer=[2, 5])[0].embeddings
    assert torch.equal(mean, (layers[0] + layers[1]) / 2)
    normalized = unpadded.encode(["a cat"], hidden_layer=[2, 5], layer_combine="normalized_mean")[0].embeddings
    rms = [x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() for x in layers]
    torch.testing.assert_close(normalized, (layers[0] / rms[0] + layers[1] / rms[1]) / 2)
    everything = unpadded.encode(["a cat"], hidden_layer="all")[0].embeddings
    torch.testing.assert_close(everything, torch.stack([s[0] for s in states[1:]]).mean(0))
    assert torch.equal(combine_layers([layers[0]], "normalized_mean"), layers[0])


# ----- long prompts -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["truncate", "interpolate", "pool", "attention_pool"])
def test_every_long_prompt_mode_gives_exactly_max_length_rows(encoder, mode):
    encoded = encoder.encode([LONG_PROMPT], max_length=40, long_prompt_mode=mode)[0]
    assert encoded.num_tokens > 40 and encoded.compressed
    assert encoded.embeddings.shape[0] == len(encoded.row_segments) == 40
    assert encoded.token_ids.shape[0] == encoded.num_tokens == len(encoded.segments)


def test_truncate_matches_diffusers_truncating_the_tokens(encoder, pipe):
    encoded = encoder.encode([LONG_PROMPT, "a cat"], max_length=40)
    expected = diffusers_embeddings(pipe, [LONG_PROMPT, "a cat"], max_length=40)
    assert all(torch.equal(e.embeddings, x) for e, x in zip(encoded, expected))
    assert encoded[0].row_segments == encoded[0].segments[:40]


@pytest.mark.parametrize("mode", ["interpolate", "pool", "attention_pool"])
def test_resampling_keeps_the_template_rows(unpadded, mode):
    full = unpadded.encode([LONG_PROMPT], max_length=1000)[0]
    fitted = unpadded.encode([LONG_PROMPT], max_length=40, long_prompt_mode=mode)[0]
    first_user, last_user = full.segments.index("user"), len(full.segments) - full.segments[::-1].index("user")
    head, tail = first_user, len(full.segments) - last_user
    assert fitted.row_segments == ["template"] * head + ["user"] * (40 - head - tail) + ["template"] * tail
    assert torch.equal(fitted.embeddings[:head], full.embeddings[:head])
    assert torch.equal(fitted.embeddings[40 - tail :], full.embeddings[last_user:])
    assert fitted.segment_rows("user").shape[0] == 40 - head - tail


def test_resampling_falls_back_to_the_whole_sequence_when_the_template_fills_it(unpadded):
    options = EncodingOptions(system_prompt=LONG_PROMPT, max_length=20, long_prompt_mode="pool")
    encoded = unpadded.encode(["a cat"], options)[0]
    full = unpadded.encode(["a cat"], options, max_length=1000)[0]
    torch.testing.assert_close(encoded.embeddings, pool(full.embeddings, 20))
    assert encoded.row_segments[0] == "system" and len(encoded.row_segments) == 20  # label of each window's centre token


def test_resamplers():
    x = torch.randn(10, 4)
    interpolated = fit_to_length(x, ["user"] * 10, 4, "interpolate").embeddings
    torch.testing.assert_close(interpolated[[0, -1]], x[[0, -1]])
    torch.testing.assert_close(pool(x, 3), torch.stack([x[0:4].mean(0), x[3:7].mean(0), x[6:10].mean(0)]))
    torch.testing.assert_close(pool_weights(10, 3) @ x, pool(x, 3))
    outlier = torch.zeros(10, 4)
    outlier[1] = 10.0
    assert attention_pool(outlier, 2)[0, 0] > pool(outlier, 2)[0, 0]  # the outstanding token weighs more


# ----- loading and errors ----------------------------------------------------------------


def test_from_pretrained_folders_and_tokenizer_fallback(tiny, tmp_path):
    tiny.text_encoder.save_pretrained(tmp_path / "zimage" / "text_encoder")
    tiny.tokenizer.save_pretrained(tmp_path / "zimage" / "tokenizer")
    tiny.text_encoder.save_pretrained(tmp_path / "qwen3")  # plain Qwen3 folder, no tokenizer
    reference = ZImageTextEncoder(tiny.text_encoder, tiny.tokenizer).encode(["a cat"], hidden_layer=-3)[0].embeddings
    for source in ("tiny", str(tmp_path / "zimage"), str(tmp_path / "qwen3")):
        loaded = ZImageTextEncoder.from_pretrained(source, torch_dtype=torch.float32, device="cpu", hidden_layer=-3)
        assert loaded.options.hidden_layer == -3 and loaded.num_hidden_states == 9
        assert torch.equal(loaded.encode(["a cat"])[0].embeddings, reference)
    with pytest.raises(FileNotFoundError, match="neither text_encoder/config.json"):
        ZImageTextEncoder.from_pretrained(str(tmp_path))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e: e.encode(["a cat"], hidden_layer=9), r"hidden_layer 9 is out of range .* \(valid: -9\.\.8\)"),
        (lambda e: e.encode(["a cat"], hidden_layer=[1, -10]), r"valid: -9\.\.8"),
        (lambda e: e.encode([]), "prompt list is empty"),
        (lambda e: e.encode(["a cat", None]), "prompt 1 is a NoneType, not a string"),
        (lambda e: e.encode([3]), "prompt 0 is a int, not a string"),
        (lambda e: e.encode(["a cat"], hidden_layr=3), "unknown encoding option"),
        (lambda e: e.encode(["a cat"])[0].segment_rows("users"), "unknown segment 'users'"),
        (lambda e: ZImageTextEncoder(e.text_encoder, e.tokenizer, padding="left"), "unknown padding 'left'"),
    ],
)
def test_errors_are_one_clear_line(encoder, call, message):
    with pytest.raises(ValueError, match=message) as raised:
        call(encoder)
    assert "\n" not in str(raised.value)
