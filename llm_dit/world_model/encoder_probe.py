"""Does the trained encoder carry every attribute of a caption? A teacher-forced copy test.

The encoder stage trains Qwen3 as a language model on chat transcripts whose assistant
turn restates the user's scene in the plain form (`data.chat_lm_text`). Predicting an
attribute word of that answer (a size, a colour, the background...) is a copy from the
user turn: an encoder that predicts it at chance has not separated that attribute's
words, and the DiT trained on its features cannot follow them. The third training run
showed exactly this: sizes and backgrounds at chance, colours and shapes learned, and the
DiT then ignored "white" vs "black" (benchmarks/NOTES.md, third session).

`attribute_copy_accuracy` scores, per attribute kind, how often the most likely next
token belongs to the same class as the answer's actual word (synonyms count as one
class: "big" for "large" is right).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import Qwen3Model

from llm_dit.models.tiny import load_bundled_tokenizer
from llm_dit.world import vocabulary as v
from llm_dit.world_model.data import build_world, chat_lm_text, dit_prompt_text

ATTRIBUTE_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "size": v.SIZE_WORDS,
    "colour": v.COLOUR_WORDS,
    "style": v.STYLE_WORDS,
    "background": v.BACKGROUND_WORDS,
    "shape": {shape: singular for shape, (singular, _) in v.SHAPE_WORDS.items()},
}


def first_token_classes(tokenizer) -> dict[str, dict[int, str]]:
    """Per attribute kind: first token id of " word" -> its class. A token that starts words of
    two classes (or of two kinds) is left out: predicting it says nothing about the class."""
    owners: dict[int, set[tuple[str, str]]] = {}
    for kind, table in ATTRIBUTE_WORDS.items():
        for cls, words in table.items():
            for word in words:
                token = tokenizer(" " + word, add_special_tokens=False)["input_ids"][0]
                owners.setdefault(token, set()).add((kind, cls))
    classes: dict[str, dict[int, str]] = {kind: {} for kind in ATTRIBUTE_WORDS}
    for token, owned in owners.items():
        if len(owned) == 1:
            kind, cls = next(iter(owned))
            classes[kind][token] = cls
    return classes


def attribute_copy_accuracy(next_token_ids: Callable[[torch.Tensor], torch.Tensor], transcripts: Sequence[torch.Tensor],
                            answer_start: Sequence[int], classes: dict[str, dict[int, str]]) -> dict[str, dict[str, float]]:
    """Per attribute kind: accuracy and count of the answer's attribute words.

    Args:
        next_token_ids: token ids [T] -> the predicted next token id at every position [T].
        transcripts: token ids of each transcript.
        answer_start: index of the first token of each transcript's assistant answer.
        classes: `first_token_classes(tokenizer)`.
    """
    hits: dict[str, list[bool]] = {kind: [] for kind in classes}
    for ids, start in zip(transcripts, answer_start):
        predicted = next_token_ids(ids)
        for position in range(max(start, 1), len(ids)):
            target = int(ids[position])
            for kind, lookup in classes.items():
                if target in lookup:
                    hits[kind].append(lookup.get(int(predicted[position - 1])) == lookup[target])
    return {kind: {"accuracy": float(np.mean(h)) if h else float("nan"), "words": len(h)} for kind, h in hits.items()}


def transcript_answer_starts(ids: Sequence[torch.Tensor], tokenizer) -> list[int]:
    """Index just past the last `<|im_start|>` of each transcript: the assistant turn."""
    marker = tokenizer.convert_tokens_to_ids("<|im_start|>")
    return [int((row == marker).nonzero()[-1]) + 1 for row in ids]


@torch.no_grad()
def probe_encoder(encoder, tokenizer, scenes: int = 300, seed: int = 0,
                  vocabulary: torch.Tensor | None = None, output_head: torch.Tensor | None = None) -> dict[str, dict[str, float]]:
    """The copy test on `scenes` held-out scenes' transcripts.

    `output_head` is the language model's output matrix [vocab, hidden] (None: the tied input
    embedding). `vocabulary` restricts the prediction to those token ids (the encoder stage's
    softmax); None uses every row (untrained rows are zero, so they never win)."""
    _, samples = build_world(seed, "heldout", scenes, 64, 1)
    rng = np.random.default_rng([seed, 13])
    device = encoder.embed_tokens.weight.device
    transcripts = [torch.tensor(tokenizer(chat_lm_text(s.scene, s.captions[0], rng), add_special_tokens=False)["input_ids"])
                   for s in samples]
    head = (encoder.embed_tokens.weight if output_head is None else output_head).to(device=device, dtype=encoder.embed_tokens.weight.dtype)
    rows = head if vocabulary is None else head[vocabulary.to(device)]

    def next_token_ids(ids: torch.Tensor) -> torch.Tensor:
        hidden = encoder(input_ids=ids[None].to(device)).last_hidden_state[0]
        best = (hidden @ rows.T).argmax(-1).cpu()
        return best if vocabulary is None else vocabulary.cpu()[best]

    return attribute_copy_accuracy(next_token_ids, transcripts, transcript_answer_starts(transcripts, tokenizer),
                                   first_token_classes(tokenizer))


def single_token_words(tokenizer) -> dict[str, dict[str, list[int]]]:
    """Per attribute kind: class -> token ids of its words that are one token with their leading space."""
    words: dict[str, dict[str, list[int]]] = {kind: {} for kind in ATTRIBUTE_WORDS}
    for kind, table in ATTRIBUTE_WORDS.items():
        for cls, options in table.items():
            for word in options:
                ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
                if len(ids) == 1:
                    words[kind].setdefault(cls, []).append(ids[0])
    return words


def swapped_attribute_pairs(prompts: Sequence[torch.Tensor], words: dict[str, dict[str, list[int]]],
                            rng: np.random.Generator) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per attribute kind: (prompt, the same prompt with its first word of that kind swapped for a
    word of another class of the kind). Prompts without such a word are left out."""
    pairs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {kind: [] for kind in words}
    for kind, table in words.items():
        owner = {token: cls for cls, tokens in table.items() for token in tokens}
        for ids in prompts:
            hits = [p for p, token in enumerate(ids.tolist()) if token in owner]
            others = [c for c in table if hits and c != owner[int(ids[hits[0]])]]
            if not others:
                continue
            swapped = ids.clone()
            choices = table[others[int(rng.integers(len(others)))]]
            swapped[hits[0]] = choices[int(rng.integers(len(choices)))]
            pairs[kind].append((ids, swapped))
    return pairs


@torch.no_grad()
def feature_separation(encoder, tokenizer, scenes: int = 200, seed: int = 0, hidden_layer: int = -2) -> dict[str, float]:
    """How far apart the DiT's caption features are for captions that differ in one attribute.

    Per attribute kind: the mean over held-out prompts (diffusers' template) of
    ||f(a) - f(b)|| / ||f(a)||, where f is hidden layer `hidden_layer` over every token and b swaps
    one word of that kind for another class's. An attribute whose words land on near-identical
    features (the third run's sizes and backgrounds, under 0.01) is one no DiT can follow.
    """
    _, samples = build_world(seed, "heldout", scenes, 64, 1)
    prompts = [torch.tensor(tokenizer(dit_prompt_text(s.captions[0]), add_special_tokens=False)["input_ids"]) for s in samples]
    pairs = swapped_attribute_pairs(prompts, single_token_words(tokenizer), np.random.default_rng([seed, 14]))
    device = encoder.embed_tokens.weight.device

    def features(ids: torch.Tensor) -> torch.Tensor:
        return encoder(input_ids=ids[None].to(device), output_hidden_states=True).hidden_states[hidden_layer][0].float()

    def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
        original = features(a)
        return float((original - features(b)).norm() / original.norm())

    result = {}
    for kind, kind_pairs in pairs.items():
        ratios = [relative_change(a, b) for a, b in kind_pairs]
        result[kind] = round(float(np.mean(ratios)), 4) if ratios else float("nan")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text_encoder", help="a Qwen3Model folder (e.g. lightning_logs/world_model/export/text_encoder)")
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--output_head", help="the encoder stage's lm_head.safetensors, for an encoder trained with untied embeddings")
    args = parser.parse_args()
    encoder = Qwen3Model.from_pretrained(args.text_encoder, torch_dtype=torch.float32).eval()
    head = load_file(args.output_head)["weight"].float() if args.output_head else None
    tokenizer = load_bundled_tokenizer()
    print(json.dumps({"attribute_copy_accuracy": probe_encoder(encoder, tokenizer, args.scenes, output_head=head),
                      "feature_separation": feature_separation(encoder, tokenizer)}, indent=1))


if __name__ == "__main__":
    main()
