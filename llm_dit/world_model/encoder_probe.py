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

`composition_probe` asks whether the features the DiT reads are compositional: a linear probe
fitted on the noun token's features of trained colour-shape pairs, scored on pairs never seen
in training. The fifth session found the shipped encoder's layer -2 entangles the two (the
shape probe falls from 1.0 on the embedding to 0.63 on held-out pairs), which is where the
trained model's failure on held-out pairs begins (benchmarks/NOTES.md).
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
from llm_dit.world.captions import caption
from llm_dit.world.scene import HELD_OUT, sample_scene
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


def linear_probe_accuracy(fit_x: np.ndarray, fit_y: Sequence[str], tests: dict[str, tuple[np.ndarray, Sequence[str]]],
                          l2: float = 1e-3) -> dict[str, float]:
    """Multinomial logistic regression on standardised features (L-BFGS from zeros: deterministic),
    fitted on (`fit_x`, `fit_y`); accuracy on each named test set."""
    classes = sorted(set(fit_y))
    mean, std = fit_x.mean(0), fit_x.std(0) + 1e-6
    x = torch.tensor((fit_x - mean) / std, dtype=torch.float64)
    y = torch.tensor([classes.index(label) for label in fit_y])
    weight = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=300)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + l2 * (weight ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    result = {}
    for name, (test_x, test_y) in tests.items():
        scores = torch.tensor((test_x - mean) / std, dtype=torch.float64) @ weight.detach() + bias.detach()
        predicted = [classes[i] for i in scores.argmax(1).tolist()]
        result[name] = round(float(np.mean([p == t for p, t in zip(predicted, test_y)])), 4)
    return result


POSITIONS = ("noun", "mean")
"""Where the probe reads the caption: the shape word's hidden state, or the mean over every token."""


@torch.no_grad()
def noun_features(encoder, tokenizer, split: str, count: int, seed: int, layers: Sequence[int],
                  only_held_out_pairs: bool = False) -> tuple[dict[tuple[str, int], np.ndarray], list[str], list[str]]:
    """Hidden states of one-object plain captions (diffusers' template) per (position, layer): at the
    shape word, and averaged over the caption; with each scene's shape and colour. Captions whose
    shape word is not one token are skipped."""
    shape_tokens = {token for tokens in single_token_words(tokenizer)["shape"].values() for token in tokens}
    rng = np.random.default_rng([seed, 15])
    device = encoder.embed_tokens.weight.device
    features: dict[tuple[str, int], list[np.ndarray]] = {(p, layer): [] for p in POSITIONS for layer in layers}
    shapes, colours = [], []
    while len(shapes) < count:
        scene = sample_scene(rng, split=split, n_objects=1)
        obj = scene.objects[0]
        text = dit_prompt_text(caption(scene, rng, form="plain"))
        if only_held_out_pairs and (obj.colour, obj.shape) not in HELD_OUT:
            continue
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        positions = [p for p, token in enumerate(ids) if token in shape_tokens]
        if not positions:
            continue
        hidden = encoder(input_ids=torch.tensor([ids], device=device), output_hidden_states=True).hidden_states
        for layer in layers:
            states = hidden[layer][0].float()
            features[("noun", layer)].append(states[positions[0]].cpu().numpy())
            features[("mean", layer)].append(states.mean(0).cpu().numpy())
        shapes.append(obj.shape)
        colours.append(obj.colour)
    return {key: np.stack(rows) for key, rows in features.items()}, shapes, colours


def composition_probe(encoder, tokenizer, layers: Sequence[int] | None = None, fit_scenes: int = 2000,
                      test_scenes: int = 500, seed: int = 0) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Per position (the noun token; the mean over the caption), hidden layer and attribute (shape,
    colour): a linear probe's accuracy, fitted on train-split scenes and scored on other train-split
    scenes ("trained_pairs") and on scenes whose colour-shape pair never occurs in training
    ("held_out_pairs"). Shape is a chance-0.2 task, colour chance 0.125. A layer whose held-out
    accuracy falls far below its trained one mixes the colour into the shape: a DiT reading it
    cannot draw an unseen pair."""
    layers = list(layers) if layers is not None else list(range(encoder.config.num_hidden_layers + 1))
    fit = noun_features(encoder, tokenizer, "train", fit_scenes, seed, layers)
    trained = noun_features(encoder, tokenizer, "train", test_scenes, seed + 1, layers)
    held = noun_features(encoder, tokenizer, "heldout", test_scenes, seed + 2, layers, only_held_out_pairs=True)
    return {
        position: {
            str(layer): {
                attribute: linear_probe_accuracy(
                    fit[0][position, layer], fit[index],
                    {"trained_pairs": (trained[0][position, layer], trained[index]),
                     "held_out_pairs": (held[0][position, layer], held[index])})
                for attribute, index in (("shape", 1), ("colour", 2))
            }
            for layer in layers
        }
        for position in POSITIONS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text_encoder", help="a Qwen3Model folder (e.g. lightning_logs/world_model/export/text_encoder)")
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--output_head", help="the encoder stage's lm_head.safetensors, for an encoder trained with untied embeddings")
    parser.add_argument("--composition", action="store_true",
                        help="also the linear composition probe per hidden layer (noun token; trained vs held-out colour-shape pairs)")
    args = parser.parse_args()
    encoder = Qwen3Model.from_pretrained(args.text_encoder, torch_dtype=torch.float32).eval()
    head = load_file(args.output_head)["weight"].float() if args.output_head else None
    tokenizer = load_bundled_tokenizer()
    report = {"attribute_copy_accuracy": probe_encoder(encoder, tokenizer, args.scenes, output_head=head),
              "feature_separation": feature_separation(encoder, tokenizer)}
    if args.composition:
        report["composition_probe"] = composition_probe(encoder, tokenizer)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
