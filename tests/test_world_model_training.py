"""The world model's training fixes of the third session: each checked against what it claims."""

from __future__ import annotations

from datetime import timedelta

import lightning as L
import pytest
import torch

from llm_dit.models.tiny import load_bundled_tokenizer
from llm_dit.world_model.config import StageSettings
from llm_dit.world_model.encoder_probe import attribute_copy_accuracy, first_token_classes, transcript_answer_starts
from llm_dit.world_model.stages import DitStage
from llm_dit.world_model.train import piece_time_limit

SETTINGS = StageSettings(max_steps=10, batch_size=2, learning_rate=1e-3)


def test_adaln_zero_start_makes_every_modulated_block_the_identity_and_the_output_zero():
    stage = DitStage(SETTINGS, compile=False, init="adaln_zero")
    model = stage.transformer
    x = torch.randn(2, 8, model.dim)
    adaln = model.t_embedder(torch.tensor([250.0, 900.0])).type_as(x)
    rope = model.rope_embedder(torch.zeros(8, 3, dtype=torch.long))[None].expand(2, -1, -1)
    for block in [*model.noise_refiner, *model.layers]:
        assert torch.equal(block(x, None, rope, adaln), x)
    final = next(iter(model.all_final_layer.values()))
    assert torch.count_nonzero(final(x, c=adaln)) == 0


def test_frozen_timestep_embedder_is_left_out_of_the_optimizer_and_never_changes():
    stage = DitStage(SETTINGS, compile=False, frozen_timestep_embedder=True)
    before = {k: v.clone() for k, v in stage.transformer.t_embedder.state_dict().items()}
    optimizer = stage.configure_optimizers()["optimizer"]
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in stage.transformer.t_embedder.parameters()}
    assert {id(p) for p in stage.transformer.layers.parameters()} <= optimized
    x = torch.randn(2, 16, 4, 4)
    out = stage.transformer([x[0].unsqueeze(1), x[1].unsqueeze(1)], torch.tensor([0.3, 0.7]),
                            [torch.randn(5, stage.transformer.config.cap_feat_dim)] * 2, return_dict=False)[0]
    torch.stack(out).square().mean().backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in stage.transformer.t_embedder.state_dict().items())


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_resumed_piece_gets_its_own_minutes_on_top_of_the_earlier_training_time(tmp_path):
    trainer = L.Trainer(max_steps=3, max_time=timedelta(minutes=5), logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(_Tiny(), torch.utils.data.DataLoader(torch.randn(8, 2), batch_size=2))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    earlier = next(s for k, s in checkpoint["callbacks"].items() if "Timer" in k)["time_elapsed"]["train"]
    assert earlier > 0
    assert piece_time_limit(checkpoint, 2.0) == timedelta(seconds=earlier, minutes=2)
    assert piece_time_limit(None, 2.0) == timedelta(minutes=2)


def test_attribute_copy_accuracy_counts_synonyms_as_one_class_and_scores_only_the_answer():
    tokenizer = load_bundled_tokenizer()
    classes = first_token_classes(tokenizer)
    token = {w: tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in ["big", "large", "small", "white", "black", "red"]}
    assert classes["size"][token["big"]] == classes["size"][token["large"]] != classes["size"][token["small"]]
    # user turn: "big white"; answer: "large black red" (the answer's words are what is scored)
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    ids = torch.tensor([token["big"], token["white"], start, token["large"], token["black"], token["red"]])
    assert transcript_answer_starts([ids], tokenizer) == [3]
    # A predictor that says "big" (right class for "large"), "white" (wrong for "black"), "red" (right).
    predictions = torch.tensor([0, 0, token["big"], token["white"], token["red"], 0])
    result = attribute_copy_accuracy(lambda _: predictions, [ids], [3], classes)
    assert result["size"] == {"accuracy": 1.0, "words": 1}
    assert result["background"] == {"accuracy": 0.0, "words": 1}
    assert result["colour"] == {"accuracy": 1.0, "words": 1}
    assert result["style"]["words"] == 0


def test_answer_weight_weighs_the_tokens_after_the_last_marker():
    from torch.nn import functional as F

    from llm_dit.world_model.stages import EncoderStage

    torch.manual_seed(0)
    marker, pad = 7, 0
    ids = torch.tensor([[3, 7, 4, 5, 7, 6, 5, 4], [3, 4, 7, 5, 6, 0, 0, 0]])
    plain = EncoderStage(SETTINGS, vocab_size=16, pad_token_id=pad, vocabulary=torch.arange(1, 16))
    weighted = EncoderStage(SETTINGS, vocab_size=16, pad_token_id=pad, vocabulary=torch.arange(1, 16),
                            answer_start_token_id=marker, answer_weight=3.0)
    weighted.load_state_dict(plain.state_dict())
    # Oracle: per-token losses of the plain stage, weighted by hand. Row 0's answer: targets after index 4
    # (positions 4..6 predict tokens 5..7); row 1's: positions 2..3 (position 4 predicts padding).
    hidden = plain.lm.model(input_ids=ids, attention_mask=(ids != pad).long()).last_hidden_state[:, :-1]
    logits = hidden @ plain.lm.model.embed_tokens.weight[plain.vocabulary].T
    targets = plain.position_in_vocabulary[ids[:, 1:]].masked_fill(ids[:, 1:] == pad, -100)
    per_token = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    weights = torch.tensor([[1, 1, 1, 1, 3, 3, 3], [1, 1, 3, 3, 0, 0, 0]], dtype=torch.float)
    expected = (per_token * weights).sum() / weights.sum()
    assert torch.allclose(weighted.loss(ids), expected, atol=1e-6)
    assert torch.allclose(plain.loss(ids), per_token.sum() / (ids[:, 1:] != pad).sum(), atol=1e-6)


def test_untied_stage_predicts_with_its_own_head_and_padding_columns_change_nothing():
    from torch.nn import functional as F

    from llm_dit.world_model.stages import EncoderStage

    torch.manual_seed(0)
    pad = 0
    ids = torch.tensor([[3, 7, 4, 5, 7, 6], [3, 4, 7, 5, 0, 0]])
    stage = EncoderStage(SETTINGS, vocab_size=16, pad_token_id=pad, vocabulary=torch.arange(1, 16), tied_embeddings=False)
    assert stage.lm.lm_head.weight.data_ptr() != stage.lm.model.embed_tokens.weight.data_ptr()
    # Oracle: the cross-entropy of the separate head's logits, over real tokens only.
    hidden = stage.lm.model(input_ids=ids, attention_mask=(ids != pad).long()).last_hidden_state[:, :-1]
    logits = hidden @ stage.lm.lm_head.weight[stage.vocabulary].T
    targets = stage.position_in_vocabulary[ids[:, 1:]].masked_fill(ids[:, 1:] == pad, -100)
    expected = F.cross_entropy(logits.reshape(-1, 15), targets.reshape(-1), ignore_index=-100)
    assert torch.allclose(stage.loss(ids), expected, atol=1e-6)
    padded = torch.cat([ids, torch.full((2, 5), pad)], dim=1)  # whole columns of padding are cut, not computed
    assert torch.allclose(stage.loss(padded), expected, atol=1e-6)
    tied = EncoderStage(SETTINGS, vocab_size=16, pad_token_id=pad, vocabulary=torch.arange(1, 16))
    assert tied.lm.lm_head.weight.data_ptr() == tied.lm.model.embed_tokens.weight.data_ptr()


def test_swapped_attribute_pairs_change_the_first_word_of_the_kind_to_another_class():
    import numpy as np

    from llm_dit.world_model.encoder_probe import swapped_attribute_pairs

    words = {"size": {"big": [10, 11], "small": [12]}, "background": {"white": [20], "black": [21], "grey": [22]}}
    prompts = [torch.tensor([1, 11, 5, 12, 20]), torch.tensor([1, 5, 6])]
    pairs = swapped_attribute_pairs(prompts, words, np.random.default_rng(0))
    assert len(pairs["size"]) == 1 and len(pairs["background"]) == 1  # the second prompt has neither kind
    original, swapped = pairs["size"][0]
    assert torch.equal(original, prompts[0])
    assert swapped.tolist() == [1, 12, 5, 12, 20]  # only the first size word ("big" -> the one "small" token)
    original, swapped = pairs["background"][0]
    assert swapped[:4].tolist() == [1, 11, 5, 12] and int(swapped[4]) in (21, 22)


def test_feature_separation_is_zero_for_an_attribute_whose_words_share_one_embedding():
    from transformers import Qwen3Config, Qwen3Model

    from llm_dit.world_model.encoder_probe import feature_separation, single_token_words

    tokenizer = load_bundled_tokenizer()
    torch.manual_seed(0)
    encoder = Qwen3Model(Qwen3Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                     num_attention_heads=2, num_key_value_heads=1, head_dim=8)).eval()
    size_tokens = [t for tokens in single_token_words(tokenizer)["size"].values() for t in tokens]
    with torch.no_grad():
        encoder.embed_tokens.weight[size_tokens] = encoder.embed_tokens.weight[size_tokens[0]].clone()
    separation = feature_separation(encoder, tokenizer, scenes=12)
    assert separation["size"] == 0.0  # the DiT could not tell "big" from "small": the third run's failure
    assert separation["colour"] > 0.01 and separation["background"] > 0.01


@pytest.mark.parametrize("tied", [True, False])
def test_exported_encoder_scores_as_the_trained_language_model(tmp_path, tied):
    """The held-out perplexity is computed on the export again: with tied embeddings its own input
    embedding must be the head (a replaced model once left the evaluator's random head in place)."""
    from llm_dit.world_model.stages import EncoderStage
    from llm_dit.world_model.train import exported_language_model

    tokenizer = load_bundled_tokenizer()
    torch.manual_seed(0)
    vocabulary = torch.arange(100, 400)
    stage = EncoderStage(SETTINGS, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, vocabulary=vocabulary,
                         tied_embeddings=tied)
    with torch.no_grad():  # a trained model's rows are far from its random start
        stage.lm.model.embed_tokens.weight[vocabulary] *= 40
    stage.lm.model.save_pretrained(tmp_path / "text_encoder")
    head = None if tied else stage.lm.lm_head.weight.detach().clone()
    again = exported_language_model(tmp_path / "text_encoder", SETTINGS, tokenizer, vocabulary, head)
    ids = torch.randint(100, 400, (3, 12))
    with torch.no_grad():
        assert torch.allclose(again.loss(ids), stage.loss(ids), atol=1e-5)


def test_frozen_embeddings_stay_at_their_start_while_the_layers_and_head_train():
    from llm_dit.world_model.stages import EncoderStage

    torch.manual_seed(0)
    with pytest.raises(ValueError, match="untied"):
        EncoderStage(SETTINGS, vocab_size=16, pad_token_id=0, vocabulary=torch.arange(1, 16), frozen_embeddings=True)
    stage = EncoderStage(SETTINGS, vocab_size=16, pad_token_id=0, vocabulary=torch.arange(1, 16),
                         tied_embeddings=False, frozen_embeddings=True)
    embedding = stage.lm.model.embed_tokens.weight.detach().clone()
    head, layer = stage.lm.lm_head.weight.detach().clone(), stage.lm.model.layers[0].mlp.up_proj.weight.detach().clone()
    optimizer = stage.configure_optimizers()["optimizer"]
    stage.loss(torch.tensor([[3, 7, 4, 5, 7, 6]])).backward()
    optimizer.step()
    assert torch.equal(stage.lm.model.embed_tokens.weight, embedding)
    assert not torch.equal(stage.lm.lm_head.weight, head) and not torch.equal(stage.lm.model.layers[0].mlp.up_proj.weight, layer)


def test_high_noise_fraction_draws_that_share_of_sigmas_from_the_top_band():
    from llm_dit.training.objective import shift_sigmas

    plain = DitStage(SETTINGS, compile=False)
    torch.manual_seed(3)
    expected = shift_sigmas(torch.sigmoid(torch.randn(50_000)), 3.0)  # oracle: Z-Image's shifted logit-normal
    torch.manual_seed(3)
    assert torch.equal(plain.sample_sigmas(50_000, "cpu"), expected)
    assert float((expected > 0.98).float().mean()) < 0.005  # why the band exists: almost no samples up there
    banded = DitStage(SETTINGS, compile=False, high_noise_fraction=0.25)
    sigma = banded.sample_sigmas(200_000, "cpu")
    assert abs(float((sigma >= 0.98).float().mean()) - (0.25 + 0.75 * 0.0026)) < 0.01
    assert float(sigma.max()) <= 1.0
    every = DitStage(SETTINGS, compile=False, high_noise_fraction=1.0).sample_sigmas(1000, "cpu")
    assert float(every.min()) >= 0.98
    with pytest.raises(ValueError, match="high_noise_fraction"):
        DitStage(SETTINGS, compile=False, high_noise_fraction=1.5)


def test_linear_probe_accuracy_is_one_on_separable_classes_and_near_chance_on_shuffled_labels():
    import numpy as np

    from llm_dit.world_model.encoder_probe import linear_probe_accuracy

    rng = np.random.default_rng(0)
    centres = {"a": rng.normal(size=8) * 5, "b": rng.normal(size=8) * 5, "c": rng.normal(size=8) * 5}
    labels = [str(k) for k in rng.choice(list(centres), size=300)]
    x = np.stack([centres[k] + rng.normal(size=8) * 0.1 for k in labels])
    test_labels = [str(k) for k in rng.choice(list(centres), size=100)]
    test_x = np.stack([centres[k] + rng.normal(size=8) * 0.1 for k in test_labels])
    shuffled = list(rng.permutation(test_labels))
    result = linear_probe_accuracy(x, labels, {"same": (test_x, test_labels), "shuffled": (test_x, shuffled)})
    assert result["same"] == 1.0
    assert result["shuffled"] < 0.6  # chance 1/3: the probe reads the features, not the labels' order


def test_composition_probe_on_the_embedding_reads_the_noun_and_not_its_colour():
    """Layer 0 at the noun token is the word's own embedding: its shape decodes perfectly on trained and
    held-out colour-shape pairs alike, and it holds no colour, so on held-out pairs (whose colour never
    occurs with that shape in the fit) the colour probe can only guess one a trained pair has: 0."""
    from transformers import Qwen3Config, Qwen3Model

    from llm_dit.world_model.encoder_probe import composition_probe

    tokenizer = load_bundled_tokenizer()
    torch.manual_seed(0)
    encoder = Qwen3Model(Qwen3Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=1, head_dim=8)).eval()
    result = composition_probe(encoder, tokenizer, layers=[0, -1], fit_scenes=150, test_scenes=40)
    assert set(result) == {"noun", "mean"} and set(result["noun"]) == set(result["mean"]) == {"0", "-1"}
    assert result["noun"]["0"]["shape"] == {"trained_pairs": 1.0, "held_out_pairs": 1.0}
    assert result["noun"]["0"]["colour"]["held_out_pairs"] == 0.0
    assert all(0.0 <= value <= 1.0 for position in result.values() for layer in position.values()
               for attribute in layer.values() for value in attribute.values())


def test_encoder_layers_sets_the_language_model_depth():
    from llm_dit.world_model.config import ENCODER_CONFIG, WorldTrainingConfig
    from llm_dit.world_model.stages import EncoderStage

    assert WorldTrainingConfig().encoder_layers == ENCODER_CONFIG["num_hidden_layers"]
    vocabulary = torch.arange(10)
    stage = EncoderStage(SETTINGS, vocab_size=10, pad_token_id=0, vocabulary=vocabulary, num_layers=6)
    assert len(stage.lm.model.layers) == 6 and stage.lm.config.num_hidden_layers == 6
    assert len(EncoderStage(SETTINGS, vocab_size=10, pad_token_id=0, vocabulary=vocabulary).lm.model.layers) == ENCODER_CONFIG["num_hidden_layers"]
