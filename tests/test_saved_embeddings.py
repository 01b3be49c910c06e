"""Saved embeddings: `encode` writes them, `predict --model.embeddings` generates from them without ever
building the text encoder, makes the same images as live encoding, and refuses another encoder's
features (or a study they do not cover) in one line before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from llm_dit.cli import cli_main, main
from llm_dit.encoding.options import EncodingOptions
from llm_dit.encoding.saved import MANIFEST, SavedEmbeddings, embedding_key
from llm_dit.models.saving import save_diffusers_folder as save_components_folder
from llm_dit.models.tiny import build_tiny_components

pytestmark = pytest.mark.usefixtures("one_thread")

STUDY = {
    "name": "saved",
    "prompts": ["A red cube on a table"],
    "seeds": [7],
    "sampler": {"steps": 2, "height": 32, "width": 32},
    "conditions": [
        {"name": "layer3", "encoding": {"hidden_layer": -3, "system_prompt": "You draw."}},
        {"name": "cfg", "sampler": {"guidance_scale": 2.0, "negative_prompt": "blurry"}},
    ],
}


def write_config(folder: Path, weights: str) -> Path:
    config = {
        "trainer": {"accelerator": "cpu", "devices": 1},
        "model": {"weights": weights},
        "data": {"class_path": "llm_dit.data.StudyDataModule", "init_args": {"batch_size": 1, "study": STUDY}},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def save_diffusers_folder(folder: Path, seed: int) -> Path:
    """tiny-random as a diffusers-format folder (what a real Z-Image download looks like)."""
    return save_components_folder(build_tiny_components(seed=seed), folder)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_diffusers_folder(tmp_path_factory.mktemp("weights"), seed=0)


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory) -> Path:
    """The same model with another encoder (and DiT) drawn from another seed."""
    return save_diffusers_folder(tmp_path_factory.mktemp("other"), seed=1)


@pytest.fixture(scope="module")
def encoded(weights, tmp_path_factory) -> tuple[Path, Path]:
    """(config, embeddings folder) encoded from `weights`."""
    root = tmp_path_factory.mktemp("encoded")
    config = write_config(root, str(weights))
    cli_main(["encode", "--config", str(config), "--out", str(root / "emb")])
    return config, root / "emb"


class EncoderBuilt(BaseException):
    """A BaseException, so no `except Exception` on the way can hide it."""


def forbid_encoder(monkeypatch) -> None:
    """Any Qwen3 construction or load, or any full-model load, raises."""
    import transformers

    import llm_dit.module as module

    def refuse(*args, **kwargs):
        raise EncoderBuilt("the text encoder was built or loaded")

    monkeypatch.setattr(transformers.Qwen3Model, "__init__", refuse)
    monkeypatch.setattr(transformers.Qwen3Model, "from_pretrained", refuse)
    monkeypatch.setattr(module, "load_components", refuse)


@pytest.fixture
def no_encoder(monkeypatch):
    forbid_encoder(monkeypatch)


def test_the_guard_catches_an_encoder_load(weights, tmp_path, no_encoder):
    """Without saved embeddings predict builds the encoder: the guard must stop it, or it proves nothing."""
    config = write_config(tmp_path, str(weights))
    with pytest.raises(EncoderBuilt):
        cli_main(["predict", "--config", str(config), "--trainer.default_root_dir", str(tmp_path)])


def test_encode_writes_one_file_per_prompt_and_options_with_metadata(encoded, weights):
    _, folder = encoded
    manifest = json.loads((folder / MANIFEST).read_text())
    layer3 = EncodingOptions(hidden_layer=-3, system_prompt="You draw.")
    expected = {(STUDY["prompts"][0], EncodingOptions()), (STUDY["prompts"][0], layer3), ("blurry", EncodingOptions())}
    assert set(manifest["entries"]) == {embedding_key(p, o) for p, o in expected}
    with safe_open(str(folder / f"{embedding_key(STUDY['prompts'][0], layer3)}.safetensors"), framework="pt") as handle:
        fields = json.loads(handle.metadata()["embedding"])
        rows = handle.get_tensor("embeddings")
    assert fields["prompt"] == STUDY["prompts"][0] and fields["options"]["hidden_layer"] == -3
    assert fields["text"].startswith("<|im_start|>system\nYou draw.<|im_end|>")
    assert {"system", "user", "template"} <= set(fields["segments"]) and len(fields["segments"]) == fields["num_tokens"]
    assert rows.shape == (fields["num_tokens"], 32)
    assert fields["encoder"]["fingerprint"] == manifest["encoder"]["fingerprint"]
    assert fields["encoder"]["source"] == f"{weights}/text_encoder"


def test_saved_embeddings_equal_live_encoding_and_never_build_the_encoder(encoded, weights, tmp_path, monkeypatch):
    config, folder = encoded
    cli_main(["predict", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "live")])
    forbid_encoder(monkeypatch)
    cli_main(["predict", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "saved"),
              "--model.embeddings", str(folder)])
    live = sorted((tmp_path / "live" / "lightning_logs" / "saved" / "images").rglob("*.png"))
    assert len(live) == 3  # control, layer3, cfg
    for png in live:
        other = tmp_path / "saved" / png.relative_to(tmp_path / "live")
        assert other.read_bytes() == png.read_bytes(), png.name


def test_a_live_run_folder_resumes_from_saved_embeddings(encoded, tmp_path, monkeypatch):
    """The same images either way, so the run folder resumes: nothing is made again, no row rewritten."""
    config, folder = encoded
    cli_main(["predict", "--config", str(config), "--trainer.default_root_dir", str(tmp_path)])
    table = tmp_path / "lightning_logs" / "saved" / "results.jsonl"
    before = table.read_bytes()
    forbid_encoder(monkeypatch)
    cli_main(["predict", "--config", str(config), "--trainer.default_root_dir", str(tmp_path),
              "--model.embeddings", str(folder)])
    assert table.read_bytes() == before


def test_another_encoder_is_refused_before_any_model_loads(encoded, other_weights, tmp_path, capsys, monkeypatch,
                                                          no_encoder):
    config, folder = encoded
    other = other_weights
    monkeypatch.setattr("sys.argv", ["llm_dit", "predict", "--config", str(config), "--model.weights", str(other),
                                     "--model.embeddings", str(folder), "--trainer.default_root_dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: saved embeddings in")
    assert "another text encoder" in err and f"{other}/text_encoder" in err
    assert not (tmp_path / "lightning_logs").exists()


def test_a_prompt_that_was_not_encoded_is_refused_before_any_model_loads(encoded, tmp_path, capsys, monkeypatch,
                                                                           no_encoder):
    config, folder = encoded
    monkeypatch.setattr("sys.argv", ["llm_dit", "predict", "--config", str(config), "--model.embeddings", str(folder),
                                     "--data.init_args.study.prompts", '["A blue sphere"]',
                                     "--trainer.default_root_dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        main()
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model.embeddings") and "'A blue sphere'" in err and "encode" in err


def test_encoder_fingerprint_needs_no_model_and_follows_the_weights(weights, tmp_path, no_encoder):
    from llm_dit.encoding.saved import encoder_identity

    same = encoder_identity(str(weights))
    assert same == encoder_identity(str(weights))
    copy = tmp_path / "copy"
    (copy / "text_encoder").mkdir(parents=True)
    for file in (weights / "text_encoder").iterdir():
        data = bytearray(file.read_bytes())
        if file.suffix == ".safetensors":  # one weight changed: the sampled bytes must see it
            offset = len(data) * 10 // 64  # one of the sampled offsets
            data[offset] ^= 0xFF
        (copy / "text_encoder" / file.name).write_bytes(bytes(data))
    assert encoder_identity(str(weights), text_encoder_override=str(copy / "text_encoder")) != same
    assert encoder_identity("tiny-random", tiny_seed=0) != encoder_identity("tiny-random", tiny_seed=1)


def test_saved_embeddings_answer_like_the_encoder(encoded, weights):
    """The module reads them through the encoder's `encode` contract, tokens and segments included."""
    from llm_dit.encoding.encoder import ZImageTextEncoder

    _, folder = encoded
    saved = SavedEmbeddings.open(folder, str(weights))
    live = ZImageTextEncoder.from_pretrained(str(weights), padding="none")
    options = EncodingOptions(hidden_layer=-3, system_prompt="You draw.")
    (mine,), (theirs,) = saved.encode([STUDY["prompts"][0]], options), live.encode([STUDY["prompts"][0]], options)
    assert mine.tokens == theirs.tokens and mine.segments == theirs.segments and mine.text == theirs.text
    assert mine.embeddings.equal(theirs.embeddings) and mine.token_ids.equal(theirs.token_ids)


def test_fit_refuses_saved_embeddings(encoded, weights):
    from llm_dit.module import ZImageModule

    _, folder = encoded
    with pytest.raises(ValueError, match="for predict and serve"):
        ZImageModule(weights=str(weights), embeddings=str(folder), fit={"adapter": {"variant": "lora"}})


def test_single_files_load_without_the_encoder(tmp_path, monkeypatch):
    """ComfyUI-style files: the DiT and VAE load (same weights as the full load), the encoder file is never read."""
    from llm_dit.models import export_single_files, load_components
    from llm_dit.models.without_encoder import load_components_without_text_encoder

    components = build_tiny_components(seed=0)
    export_single_files(components, tmp_path)
    full = load_components(str(tmp_path))
    forbid_encoder(monkeypatch)
    import llm_dit.models.single_file as single_file

    read = single_file.load_single_file

    def no_encoder_file(path, role, *args, **kwargs):
        assert role != "text_encoder", f"the text encoder file {path} was loaded"
        return read(path, role, *args, **kwargs)

    monkeypatch.setattr(single_file, "load_single_file", no_encoder_file)
    loaded = load_components_without_text_encoder(str(tmp_path), caption_dim=32)
    assert loaded.text_encoder is None and loaded.tokenizer is None
    for part in ("transformer", "vae"):
        mine, theirs = getattr(loaded, part).state_dict(), getattr(full, part).state_dict()
        assert mine.keys() == theirs.keys() and all(mine[k].equal(theirs[k]) for k in mine)
    with pytest.raises(ValueError, match="64 wide"):
        load_components_without_text_encoder(str(tmp_path), caption_dim=64)


def test_features_that_depend_on_batch_mates_are_saved_as_predict_computes_them(tmp_path):
    """encoder_padding "diffusers" with a long-prompt mode pads a batch to its longest prompt: a prompt's
    features then depend (in the last bits) on its batch mates. encode calls the encoder per predict batch."""
    from llm_dit.encoding.encoder import ZImageTextEncoder

    short, long = "A red cube on a wooden table in the morning light", "A cat " * 20
    options = EncodingOptions(max_length=12, long_prompt_mode="pool")
    config = {
        "trainer": {"accelerator": "cpu", "devices": 1},
        "model": {"weights": "tiny-random", "predict": {"encoder_padding": "diffusers"}},
        "data": {"class_path": "llm_dit.data.StudyDataModule", "init_args": {"batch_size": 2, "study": {
            "name": "pooled", "prompts": [short, long], "seeds": [1], "sampler": STUDY["sampler"],
            "encoding": {"max_length": 12, "long_prompt_mode": "pool"}}}},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    cli_main(["encode", "--config", str(tmp_path / "study.yaml"), "--out", str(tmp_path / "emb")])
    saved = SavedEmbeddings.open(tmp_path / "emb", "tiny-random").encode([short, long], options)
    encoder = ZImageTextEncoder.from_pretrained("tiny-random", padding="diffusers")
    batch = encoder.encode([short, long], options)  # what predict's one batch computes
    alone = encoder.encode([short], options)[0]
    assert not alone.embeddings.equal(batch[0].embeddings)  # the case is real: batch mates matter here
    assert all(mine.embeddings.equal(theirs.embeddings) for mine, theirs in zip(saved, batch))
