"""ZImageConfig: one config per model, read without loading, checked before anything loads.

Oracles: the modules diffusers and transformers actually build (on the meta device, or loaded
from the same files) say what the shapes are; the config read beforehand must agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, ZImageTransformer2DModel
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3Model

import llm_dit.models.config as config_module
from llm_dit.models import (
    ShapeMismatchError, SingleFileWeights, ZImageConfig, check_weights_source, export_single_files, load_components,
)
from llm_dit.models.shapes import TINY_TEXT_ENCODER_CONFIG
from llm_dit.models.single_file import load_single_file
from llm_dit.models.tiny import build_tiny_components
from llm_dit.module import ZImageModule
from llm_dit.study import Study


def built_shapes(transformer: torch.nn.Module, encoder: torch.nn.Module, vae: torch.nn.Module) -> dict:
    """What the built modules hold, counted from their children (not read from a config)."""
    return {
        "blocks": {"context_refiner": len(transformer.context_refiner), "noise_refiner": len(transformer.noise_refiner),
                   "layers": len(transformer.layers)},
        "hidden_states": len(encoder.layers) + 1,
        "encoder_width": encoder.embed_tokens.weight.shape[1],
        "caption_width": transformer.cap_embedder[1].weight.shape[1],
        "latent_channels": vae.decoder.conv_in.weight.shape[1],
    }


def config_shapes(config: ZImageConfig) -> dict:
    return {
        "blocks": config.block_counts, "hidden_states": config.hidden_states,
        "encoder_width": config.text_encoder["hidden_size"], "caption_width": config.transformer["cap_feat_dim"],
        "latent_channels": config.vae["latent_channels"],
    }


@pytest.fixture(scope="module")
def tiny_components():
    return build_tiny_components(seed=0)


@pytest.mark.parametrize("name", ["tiny-random", "random-z-image-turbo"])
def test_presets_describe_what_gets_built(name):
    config = ZImageConfig.from_name(name)
    with torch.device("meta"):  # the full-size preset costs nothing on meta
        transformer = ZImageTransformer2DModel(**config.transformer)
        encoder = Qwen3Model(Qwen3Config(vocab_size=64, **{k: v for k, v in config.text_encoder.items() if k != "vocab_size"}))
        vae = AutoencoderKL(**config.vae)
    assert config_shapes(config) == built_shapes(transformer, encoder, vae)
    config.check()


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="unknown model preset 'tiny-randm'; choose one of tiny, tiny-random"):
        ZImageConfig.from_name("tiny-randm")


def test_diffusers_folder_and_single_files_without_stored_config(tmp_path, tiny_components):
    for role in ("transformer", "text_encoder", "vae"):
        getattr(tiny_components, role).save_pretrained(tmp_path / "diffusers" / role)
    from_folder = ZImageConfig.from_path(tmp_path / "diffusers")
    expected = built_shapes(tiny_components.transformer, tiny_components.text_encoder, tiny_components.vae)
    assert config_shapes(from_folder) == expected

    files = export_single_files(tiny_components, tmp_path / "single")
    for path in files.values():  # drop the stored config: shapes must come from the tensors' header
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        save_file(tensors, str(path))
    with pytest.raises(ShapeMismatchError, match="norm_num_groups=32 does not divide"):
        ZImageConfig.from_path(tmp_path / "single")  # the group count is not in the weights: caught before loading
    spec = SingleFileWeights.from_folder(tmp_path / "single")
    spec.vae_config = {"norm_num_groups": 4}
    from_files = ZImageConfig.from_path(spec)
    loaded = {role: load_single_file(path, role, config=spec.configs()[role]) for role, path in files.items()}
    assert config_shapes(from_files) == built_shapes(loaded["transformer"], loaded["text_encoder"], loaded["vae"])
    for key in ("dim", "n_heads", "n_kv_heads", "axes_dims"):
        assert from_files.transformer[key] == loaded["transformer"].config[key], key


def encoder_folder(folder: Path, **changes) -> Path:
    """A transformers encoder folder holding only config.json: checks before loading need nothing else."""
    folder.mkdir(parents=True)
    config = Qwen3Config(vocab_size=151669, **{**TINY_TEXT_ENCODER_CONFIG, **changes})
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    return folder


def test_encoder_override_is_checked_before_loading(tmp_path):
    wide = encoder_folder(tmp_path / "wide", hidden_size=48, head_dim=24)
    with pytest.raises(ShapeMismatchError, match=r"hidden size 48 .* takes 32-wide"):
        check_weights_source("tiny-random", text_encoder_override=str(wide))  # no weights there: nothing loaded
    with pytest.raises(ShapeMismatchError, match=r"hidden size 48"):
        ZImageModule(weights="tiny-random", load={"text_encoder_override": str(wide)})


def test_study_is_validated_against_the_override_encoder(tmp_path):
    """Hidden layers are checked against the encoder that will run, not the base model's."""
    shallow = encoder_folder(tmp_path / "shallow", num_hidden_layers=4)  # 5 hidden states: -6 does not exist
    study = Study(name="s", prompts=["a"], seeds=[0], conditions=[{"name": "deep", "encoding": {"hidden_layer": -6}}])
    ZImageModule(weights="tiny-random").validate_study(study)  # the base encoder has 9
    with pytest.raises(ValueError, match="condition 'deep'"):
        ZImageModule(weights="tiny-random", load={"text_encoder_override": str(shallow)}).validate_study(study)


def test_tiny_reads_the_embedded_folder_when_shipped(tmp_path, monkeypatch, tiny_components):
    monkeypatch.setattr(config_module, "EMBEDDED_ROOT", tmp_path)
    assert config_module.embedded_model_folder() is None
    folder = tmp_path / "tiny"
    deeper = ZImageTransformer2DModel(**{**tiny_components.transformer.config, "n_layers": 3})
    deeper.save_pretrained(folder / "transformer")
    tiny_components.text_encoder.save_pretrained(folder / "text_encoder")
    tiny_components.vae.save_pretrained(folder / "vae")
    assert config_module.embedded_model_folder() == folder
    config = ZImageConfig.from_name("tiny")
    assert config.source == "tiny" and config.block_counts["layers"] == 3
    assert ZImageConfig.from_name("tiny-random").block_counts["layers"] == 2  # the random preset keeps its shapes


def test_tiny_loads_the_shipped_weights_and_tiny_random_stays_random(tmp_path, monkeypatch, tiny_components):
    monkeypatch.setattr(config_module, "EMBEDDED_ROOT", tmp_path)
    folder = tmp_path / "tiny"
    torch.manual_seed(7)
    trained = ZImageTransformer2DModel(**tiny_components.transformer.config)  # other weights than the random preset's
    trained.save_pretrained(folder / "transformer")
    tiny_components.text_encoder.save_pretrained(folder / "text_encoder")
    tiny_components.vae.save_pretrained(folder / "vae")
    loaded = load_components("tiny")
    assert "trained" in loaded.source and str(folder) in loaded.source
    for name, tensor in trained.state_dict().items():
        assert torch.equal(loaded.transformer.state_dict()[name], tensor), name
    random_preset = load_components("tiny-random")
    assert not torch.equal(random_preset.transformer.layers[0].attention.to_q.weight, trained.layers[0].attention.to_q.weight)
