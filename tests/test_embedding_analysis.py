"""Embedding analysis on the tiny encoder: layer matrix, think-block drift, token budget, the callback."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from callbacks.embedding_analysis import ANALYSIS_FILE, FIGURE_FILE, EmbeddingAnalysis, analyze_embeddings
from llm_dit.encoding.encoder import ZImageTextEncoder
from llm_dit.outputs import GeneratedBatch
from llm_dit.study import Study

PROMPTS = ["A cat sleeping on a red couch", "Portrait of an elderly woman, studio lighting"]
LAYERS = [-1, -2, -3, -4, -5, -6]
EMPTY_THINK = "<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def encoder():
    from llm_dit.models import build_tiny_components

    tiny = build_tiny_components(seed=0)
    return ZImageTextEncoder(tiny.text_encoder, tiny.tokenizer)


def think_study() -> Study:
    return Study(
        name="think", kind="think_block", prompts=PROMPTS, control="none", seeds=[42, 123],
        conditions=[
            {"name": "none"},
            {"name": "empty", "encoding": {"force_think_block": True}},
            {"name": "quality", "encoding": {"thinking_content": "High detail, sharp focus, correct anatomy"}},
        ],
    )


@pytest.fixture(scope="module")
def layer_analysis(encoder):
    study = Study(
        name="layers", kind="hidden_layer", prompts=PROMPTS, control="hidden_layer=-2",
        variables={"encoding.hidden_layer": LAYERS},
        conditions=[{"name": "mix", "encoding": {"hidden_layer": [-1, -2], "layer_combine": "mean"}}],
    )
    return analyze_embeddings(encoder, study)


@pytest.fixture(scope="module")
def think_analysis(encoder):
    return analyze_embeddings(encoder, think_study())


def test_layer_matrix_is_symmetric_with_unit_diagonal(layer_analysis):
    cosine = layer_analysis["cosine_matrix"]
    assert cosine["names"] == [f"hidden_layer={k}" for k in LAYERS] + ["mix"]
    matrix = torch.tensor(cosine["matrix"], dtype=torch.float64)
    assert torch.allclose(matrix, matrix.T)
    assert torch.allclose(matrix.diagonal(), torch.ones(len(cosine["names"]), dtype=torch.float64))
    off_diagonal = matrix[~torch.eye(len(matrix), dtype=torch.bool)]
    assert (off_diagonal < 1 - 1e-6).all()  # the tiny encoder's layers do differ
    assert layer_analysis["num_prompts"]["mix"] == len(PROMPTS)


def test_empty_think_block_changes_the_embedding(think_analysis):
    drift = think_analysis["drift_vs_control"]
    assert drift["none"]["semantic_drift"] == pytest.approx(0.0, abs=1e-9)
    assert drift["empty"]["semantic_drift"] > 1e-4
    assert drift["quality"]["semantic_drift"] > 1e-4


def test_think_block_leaves_user_tokens_unchanged(think_analysis):
    """Causal attention: the think block comes after the prompt, so the prompt's rows cannot change."""
    for name in ("empty", "quality"):
        assert think_analysis["drift_vs_control"][name]["cosine_user_tokens"] == pytest.approx(1.0, abs=1e-6)


def test_token_counts_differ_by_the_think_block(think_analysis, encoder):
    empty_block = len(encoder.tokenizer(EMPTY_THINK)["input_ids"])
    counts = think_analysis["token_counts"]
    assert counts["none"]["extra_tokens_vs_control"] == 0
    assert counts["empty"]["extra_tokens_vs_control"] == empty_block
    assert counts["empty"]["mean_tokens"] - counts["none"]["mean_tokens"] == empty_block
    thinking = len(encoder.tokenizer("High detail, sharp focus, correct anatomy")["input_ids"])
    segments = think_analysis["segments"]["quality"]
    assert segments["think"]["mean_tokens"] == thinking
    assert -1.0 <= segments["think_user_cosine"] <= 1.0
    assert "think" not in think_analysis["segments"]["empty"]


def test_system_prompt_changes_user_tokens(encoder):
    study = Study(
        name="sys", kind="system_prompt", prompts=PROMPTS[:1], control="none",
        conditions=[{"name": "none"}, {"name": "default", "encoding": {"system_prompt": "You are a helpful assistant"}}],
    )
    result = analyze_embeddings(encoder, study)
    assert result["drift_vs_control"]["default"]["cosine_user_tokens"] < 1 - 1e-6
    assert result["segments"]["default"]["system"]["mean_tokens"] > 0


class Recorder:
    """Stands in for the TensorBoard SummaryWriter."""

    def __init__(self) -> None:
        self.figures, self.scalars = [], []

    def add_figure(self, tag, figure, global_step=None):
        self.figures.append(tag)

    def add_scalar(self, tag, value, global_step=None):
        self.scalars.append((tag, value))


def test_callback_summarizes_the_table_from_stored_sidecars(encoder, tmp_path):
    """Generated items store their sidecar; the summary covers every (prompt, condition) of the table.

    The first batch plays an earlier run's items (resumed: in the table, no features this run):
    their pairs come from the table, encoded once (fill_resumed) and stored; drift comes from the
    table's extra.refiner_drift column, whichever run wrote it.
    """
    study = think_study()
    items = study.items()
    experiment = Recorder()
    trainer = SimpleNamespace(
        is_global_zero=True,
        logger=SimpleNamespace(log_dir=str(tmp_path), experiment=experiment),
        datamodule=SimpleNamespace(study=study, items=items),
    )
    module = SimpleNamespace(encoder=encoder)
    batches = [items[i : i + 2] for i in range(0, len(items), 2)]

    def table_rows(batch, drift):  # what the StudyWriter stores for these items
        return "".join(json.dumps({
            "item_id": i.item_id, "condition": i.condition, "condition_index": i.condition_index,
            "prompt_index": i.prompt_index, "seed": i.seed, "prompt": i.prompt, "extra.refiner_drift": drift,
        }) + "\n" for i in batch)

    (tmp_path / "results.jsonl").write_text(table_rows(batches[0], [0.9, 0.8]))
    callback = EmbeddingAnalysis()
    callback.on_predict_start(trainer, module)
    for index, batch in enumerate(batches):
        resumed = index == 0
        encoded = encoder.encode([item.prompt for item in batch], batch[0].encoding)
        outputs = GeneratedBatch(
            items=batch, images=torch.zeros(len(batch), 3, 8, 8), seconds_per_image=0.0, peak_memory_bytes=None,
            resumed=[resumed] * len(batch),
            embeddings=[None if resumed else e.embeddings for e in encoded],
            encodings=[None if resumed else e for e in encoded],
            extras={"refiner_drift": [None if resumed else [0.7, 0.6] for _ in batch]},
        )
        callback.on_predict_batch_end(trainer, module, outputs, batch, index)
        if not resumed:
            with open(tmp_path / "results.rank0.jsonl", "a") as shard:
                shard.write(table_rows(batch, [0.7, 0.6]))
    callback.on_predict_end(trainer, module)

    written = json.loads((tmp_path / ANALYSIS_FILE).read_text())
    expected = analyze_embeddings(encoder, study)
    assert written["conditions"] == ["none", "empty", "quality"]
    assert written["num_prompts"] == {"none": 2, "empty": 2, "quality": 2}
    assert torch.allclose(torch.tensor(written["cosine_matrix"]["matrix"]), torch.tensor(expected["cosine_matrix"]["matrix"]))
    assert written["segments"] == expected["segments"] and written["token_counts"] == expected["token_counts"]
    assert written["drift"]["layers"] == ["context_refiner.0", "context_refiner.1"]
    assert written["drift"]["series"]["none"] == pytest.approx([0.8, 0.7])  # 2 stored rows at 0.9/0.8, 2 new at 0.7/0.6
    assert written["drift"]["series"]["empty"] == pytest.approx([0.7, 0.6])
    assert len(list((tmp_path / "embeddings").rglob("*.safetensors"))) == 6  # 3 conditions x 2 prompts
    assert (tmp_path / FIGURE_FILE).is_file()
    assert experiment.figures == ["embedding_analysis/cosine_matrix"]
    assert {tag for tag, _ in experiment.scalars} == {f"embedding_analysis/semantic_drift/{n}" for n in ("none", "empty", "quality")}

    # A one-item smoke run over the same folder (every pair now stored) writes the same file.
    smoke = EmbeddingAnalysis(fill_resumed=False)
    smoke.on_predict_start(trainer, SimpleNamespace(encoder=None))
    first = items[:1]
    outputs = GeneratedBatch(items=first, images=torch.zeros(1, 3, 8, 8), seconds_per_image=0.0,
                             peak_memory_bytes=None, resumed=[True], embeddings=[None], encodings=[None])
    smoke.on_predict_batch_end(trainer, module, outputs, first, 0)
    smoke.on_predict_end(trainer, module)
    assert json.loads((tmp_path / ANALYSIS_FILE).read_text()) == written


def test_sidecar_round_trip_is_lossless(encoder, tmp_path):
    from callbacks.embedding_analysis import load_record, make_record, save_record

    item = think_study().items()[2]
    encoded = encoder.encode([item.prompt], item.encoding)[0]
    record = make_record(encoded.embeddings, encoded, item.prompt_index, item.condition)
    save_record(record, tmp_path / "r.safetensors", item.prompt)
    loaded = load_record(tmp_path / "r.safetensors", item.prompt)
    assert torch.equal(loaded.mean, record.mean) and torch.equal(loaded.user_rows, record.user_rows)
    assert (loaded.user_token_ids, loaded.segment_tokens, loaded.segment_norms, loaded.num_tokens) == (
        record.user_token_ids, record.segment_tokens, record.segment_norms, record.num_tokens)
    assert load_record(tmp_path / "r.safetensors", "another prompt") is None  # a sidecar of another prompt is not used
