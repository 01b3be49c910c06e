"""The embedded `tiny` model: the files shipped are the files trained, and they still score what they scored.

`python -m llm_dit.world_model.ship <export>` writes the folder with `checksums.json` and
`reference.json` (issue 18). The shipping path itself is checked on a small random export, so it is
tested whether or not trained weights are in the repository.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from llm_dit.models.config import TINY, embedded_model_folder
from llm_dit.models.loading import load_components
from llm_dit.world_model import ship as ship_module


def test_ship_writes_a_loadable_folder_with_checksums_and_a_reference_it_reproduces(tmp_path, monkeypatch, tiny):
    export = tmp_path / "export"
    for part in ("transformer", "vae"):
        getattr(tiny, part).save_pretrained(export / part, max_shard_size="1MB")  # sharded: as a wider model would ship
    copy.deepcopy(tiny.text_encoder).to(torch.bfloat16).save_pretrained(export / "text_encoder")  # bf16, as trained exports are
    destination = tmp_path / "tiny"
    monkeypatch.setattr(ship_module, "REFERENCE_PROMPTS", 2)
    reference = ship_module.ship(export, destination)
    assert json.loads((destination / "checksums.json").read_text()) == ship_module.file_checksums(destination)
    assert {"transformer/config.json", "text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "scheduler/scheduler_config.json", "model_index.json"} <= set(ship_module.file_checksums(destination))
    assert len(reference["images"]) == 4
    assert ship_module.reference_scores(destination, 2) == reference  # the same weights score the same, image by image
    loaded = load_components(str(destination))
    for name, tensor in tiny.transformer.state_dict().items():
        assert torch.equal(loaded.transformer.state_dict()[name].float(), tensor.float()), name


def test_ship_refuses_an_incomplete_export_before_copying(tmp_path, tiny):
    export = tmp_path / "export"
    tiny.vae.save_pretrained(export / "vae")
    with pytest.raises(FileNotFoundError, match="transformer"):
        ship_module.ship(export, tmp_path / "tiny")
    assert not (tmp_path / "tiny").exists()


SHIPPED = embedded_model_folder(TINY)
needs_shipped = pytest.mark.skipif(SHIPPED is None, reason="no trained embedded model in llm_dit/models/embedded/tiny yet")


@needs_shipped
def test_shipped_files_match_their_checksums_and_size_limits():
    assert ship_module.file_checksums(SHIPPED) == json.loads((SHIPPED / "checksums.json").read_text())
    sizes = [p.stat().st_size for p in SHIPPED.rglob("*.safetensors")]
    assert max(sizes) <= ship_module.MAX_FILE_BYTES


@needs_shipped
def test_shipped_weights_reproduce_their_reference_score():
    stored = json.loads((SHIPPED / "reference.json").read_text())
    again = ship_module.reference_scores(SHIPPED, len(stored["images"]) // 2)
    agree = sum(a["all_hold"] == b["all_hold"] for a, b in zip(stored["images"], again["images"]))
    # Bit-identical on the machine that shipped it; another CPU's float rounding may flip one image's detection.
    assert agree >= len(stored["images"]) - 1, (stored["all_hold_mean"], again["all_hold_mean"])
    assert abs(again["all_hold_mean"] - stored["all_hold_mean"]) <= 1 / len(stored["images"]) + 1e-9
