"""The lab's REST API through an HTTP client (FastAPI's TestClient): valid, invalid, concurrent and failing
requests on one loaded tiny-random model, and the lab folder as an ordinary study."""

from __future__ import annotations

import base64
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks.writer import StudyWriter, read_rows
from llm_dit.lab import LabSession, create_app
from llm_dit.module import ZImageModule
from llm_dit.study import Study

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLER = {"steps": 2, "height": 32, "width": 32}
SKIP = {"name": "skip", "surgery": [{"variant": "skip"}]}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The tests run from an empty working directory, so anything written outside the lab folder shows."""
    folder = tmp_path_factory.mktemp("cwd")
    before = os.getcwd()
    os.chdir(folder)
    yield folder
    os.chdir(before)


@pytest.fixture(scope="module")
def lab(workdir) -> tuple[LabSession, TestClient]:
    session = LabSession(ZImageModule(weights="tiny-random"), workdir / "labs" / "lab", sampler=SAMPLER,
                         accelerator="cpu")
    return session, TestClient(create_app(session))


def study_image(root: Path, prompt: str, seed: int, condition: dict) -> bytes:
    """The same (prompt, seed, condition) as a CLI-style study run: the independent oracle."""
    study = Study(name="oracle", prompts=[prompt], seeds=[seed], sampler=SAMPLER, control=condition["name"],
                  conditions=[condition])
    trainer = L.Trainer(accelerator="cpu", devices=1, default_root_dir=root, enable_progress_bar=False,
                        enable_model_summary=False, logger=TensorBoardLogger(root, name="lightning_logs", version="oracle"),
                        callbacks=[StudyWriter()])
    from llm_dit.data import StudyDataModule

    trainer.predict(ZImageModule(weights="tiny-random"), datamodule=StudyDataModule(study, batch_size=1),
                    return_predictions=False)
    (row,) = read_rows(root / "lightning_logs" / "oracle" / "results.jsonl")
    return (root / "lightning_logs" / "oracle" / row["image"]).read_bytes()


def test_generate_returns_the_png_and_the_results_row_of_a_study(lab, tmp_path):
    session, client = lab
    response = client.post("/generate", json={"prompt": "A red cube", "seed": 3, "condition": SKIP, "group": "g1"})
    assert response.status_code == 200, response.text
    result = response.json()
    rows = {row["item_id"]: row for row in read_rows(session.folder / "results.jsonl")}
    assert result["row"] == json.loads(json.dumps(rows["skip/p000_s3"]))  # exactly the table's row
    png = base64.b64decode(result["png_base64"])
    assert png == (session.folder / result["image"]).read_bytes()
    assert png == study_image(tmp_path, "A red cube", 3, SKIP)  # the same pixels as a study run
    assert result["row"]["surgery"] == [{"variant": "skip"}] and result["row"]["height"] == 32
    assert "metric.detail_score" in result["row"] and result["row"]["settings_fingerprint"]


def test_bad_input_is_422_with_the_cli_line(lab, tmp_path, capsys):
    from llm_dit.cli import main

    _, client = lab
    bad = {"name": "tall", "sampler": {"height": 65}}
    response = client.post("/generate", json={"prompt": "A red cube", "seed": 3, "condition": bad})
    assert response.status_code == 422
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"weights": "tiny-random"},
        "data": {"class_path": "llm_dit.data.StudyDataModule", "init_args": {"study": {
            "name": "bad", "prompts": ["A red cube"], "seeds": [3], "sampler": SAMPLER, "conditions": [bad]}}},
    }))
    with pytest.raises(SystemExit):
        main(["predict", "--config", str(config), "--trainer.default_root_dir", str(tmp_path)])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == f"error: {response.json()['detail']}  (set LLM_DIT_DEBUG=1 for a traceback)"


@pytest.mark.parametrize("body, words", [
    ({"prompt": "", "seed": 1}, "prompt 0 is empty"),
    ({"prompt": "A cat", "seed": -1}, "out of range"),
    ({"prompt": "A cat", "seed": 1, "condition": {"name": "a/b"}}, "not allowed"),
    ({"prompt": "A cat", "seed": 1, "condition": {"encoding": {"hidden_layr": -3}}}, "did you mean 'hidden_layer'"),
    ({"prompt": "A cat", "seed": 1, "condition": {"surgry": []}}, "unknown condition option"),
    ({"prompt": "A cat", "seed": 1, "condition": {"surgery": [{"variant": "explode"}]}}, "explode"),
    ({"prompt": "A cat", "seed": 1, "colour": "red"}, "unknown field"),
])
def test_invalid_requests_get_one_line_422(lab, body, words):
    _, client = lab
    response = client.post("/generate", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and words in detail


def test_concurrent_requests_queue_on_the_one_model(lab, monkeypatch):
    session, client = lab
    active, most = [0], [0]
    guard = threading.Lock()
    original = session._predict

    def counting(*args, **kwargs):
        with guard:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            return original(*args, **kwargs)
        finally:
            with guard:
                active[0] -= 1

    monkeypatch.setattr(session, "_predict", counting)
    bodies = [{"prompt": "A blue sphere", "seed": seed, "condition": {"name": "baseline"}, "group": "c"}
              for seed in (11, 12, 13, 14)]
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda body: client.post("/generate", json=body), bodies))
    assert [r.status_code for r in responses] == [200] * 4
    assert most[0] == 1  # never two generations at once
    ids = {r.json()["row"]["item_id"] for r in responses}
    assert ids == {f"baseline/p001_s{seed}" for seed in (11, 12, 13, 14)}
    assert ids <= {row["item_id"] for row in read_rows(session.folder / "results.jsonl")}


def test_the_server_survives_a_failing_request(lab, monkeypatch):
    session, client = lab

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure\nwith a second line")

    with monkeypatch.context() as patch:
        patch.setattr(session.module, "generate", broken)
        response = client.post("/generate", json={"prompt": "A green cone", "seed": 5})
    assert response.status_code == 500
    assert "simulated failure" in response.json()["detail"] and "\n" not in response.json()["detail"]
    response = client.post("/generate", json={"prompt": "A green cone", "seed": 5})
    assert response.status_code == 200 and response.json()["resumed"] is False


def test_a_condition_name_means_one_set_of_settings(lab):
    _, client = lab
    first = client.post("/generate", json={"prompt": "A cat", "seed": 1, "condition": {"name": "mine"}}).json()
    other = client.post("/generate", json={"prompt": "A cat", "seed": 1,
                                           "condition": {"name": "mine", "sampler": {"shift": 2.0}}}).json()
    unnamed = client.post("/generate", json={"prompt": "A cat", "seed": 1, "condition": {"sampler": {"shift": 2.0}}}).json()
    again = client.post("/generate", json={"prompt": "A cat", "seed": 1, "condition": {"name": "mine"}}).json()
    assert first["row"]["condition"] == "mine" and other["row"]["condition"] == "mine-2"
    assert unnamed["row"]["condition"] == "mine-2"  # matched on settings, not named again
    assert again["resumed"] and again["png_base64"] == first["png_base64"]


def test_encode_reports_tokens_segments_and_statistics(lab):
    from llm_dit.encoding.encoder import ZImageTextEncoder
    from llm_dit.encoding.options import EncodingOptions

    _, client = lab
    condition = {"encoding": {"system_prompt": "You paint.", "thinking_content": "warm light"}}
    result = client.post("/encode", json={"prompt": "A red cube", "condition": condition}).json()
    (expected,) = ZImageTextEncoder.from_pretrained("tiny-random", padding="none").encode(
        ["A red cube"], EncodingOptions(system_prompt="You paint.", thinking_content="warm light"))
    assert [t["segment"] for t in result["tokens"]] == expected.segments
    assert [t["id"] for t in result["tokens"]] == expected.token_ids.tolist()
    assert {"system", "user", "think", "template"} <= set(result["segments"])
    norms = expected.embeddings.float().norm(dim=-1)
    assert result["stats"]["mean_row_norm"] == pytest.approx(float(norms.mean()), rel=1e-5)
    user = torch.tensor([s == "user" for s in expected.row_segments])
    assert result["segments"]["user"]["mean_norm"] == pytest.approx(float(norms[user].mean()), rel=1e-5)
    assert result["stats"]["rows"] == expected.embeddings.shape[0] and result["stats"]["dim"] == 32
    bad = client.post("/encode", json={"prompt": "A red cube", "condition": {"encoding": {"hidden_layer": 99}}})
    assert bad.status_code == 422 and "out of range" in bad.json()["detail"]


def test_hook_points_health_memory_presets(lab):
    import surgery

    session, client = lab
    points = client.get("/hook-points").json()
    assert [p["name"] for p in points] == [p.name for p in surgery.hook_points(session.module.transformer)]
    block = next(p for p in points if p["name"] == "context_refiner.0")
    assert block["parameters"] == sum(p.numel() for p in session.module.transformer.context_refiner[0].parameters())
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["weights"] == "tiny-random"
    memory = client.get("/memory").json()
    assert memory["device"] == "cpu" and memory["process_rss_mib"] > 0
    assert memory["components"]["transformer"]["parameters"] == sum(
        p.numel() for p in session.module.transformer.parameters())
    for outside in ("/files/../../../etc/hostname", "/files/%2e%2e/%2e%2e/%2e%2e/etc/hostname", "/files//etc/hostname"):
        assert client.get(outside).status_code == 404  # only the lab folder is served
    assert client.get("/files/results.jsonl").status_code == 200
    presets = client.get("/presets").json()
    skip = next(p for p in presets if p.get("config") == "refiner_skip" and p["name"] == "skip")
    assert skip["condition"]["surgery"] == [{"variant": "skip"}] and skip["condition"]["sampler"]["height"] == 64


def test_save_as_condition_writes_a_study_yaml(lab):
    session, client = lab
    condition = {"name": "deep", "encoding": {"hidden_layer": -3}, "surgery": [{"variant": "skip"}]}
    result = client.post("/save-condition", json={"condition": condition, "prompt": "A cat", "seed": 1}).json()
    path = Path(result["path"])
    assert path.parent == session.folder / "conditions" and path.name == "deep.yaml"
    config = yaml.safe_load(path.read_text())
    study = Study(**config["data"]["init_args"]["study"])
    study.validate()
    (saved,) = [c for c in study.resolved_conditions() if c.name == "deep"]
    assert saved.encoding == {"hidden_layer": -3} and saved.surgery == [{"variant": "skip"}]
    assert [p.text for p in study.resolved_prompts()] == ["A cat"] and study.seeds == [1]
    assert study.baseline_sampler().to_dict() == session.study.baseline_sampler().to_dict()
    assert client.post("/save-condition", json={"condition": {"name": "../x"}}).status_code == 422
    preset = next(p for p in client.get("/presets").json() if p.get("config") == "saved/deep" and p["name"] == "deep")
    assert preset["condition"]["surgery"] == [{"variant": "skip"}] and preset["condition"]["sampler"] == SAMPLER


def test_the_lab_folder_is_an_ordinary_study(lab, workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from llm_dit.report import export_ab_page, write_report

    session, client = lab
    for condition in ({"name": "baseline"}, SKIP):
        assert client.post("/generate", json={"prompt": "A red cube", "seed": 3, "condition": condition}).status_code == 200
    report = write_report(session.folder, n_boot=50)
    text = report.read_text()
    assert "skip" in text and "baseline" in text
    page = export_ab_page(session.folder, pairs_per_condition=2)
    assert page.is_file() and "skip" in page.read_text()
    (events,) = session.folder.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    assert "grids/skip" in accumulator.Tags()["images"]
    sessions = sorted((session.folder / "hparams").iterdir())
    assert [p.name.split("_", 1)[1] for p in sessions][:2] == ["baseline", "skip"]
    assert all(len(list(p.glob("events.out.tfevents.*"))) == 1 for p in sessions)  # one per condition, not per request
    # nothing outside the lab folder: the working directory holds only it
    assert [p.name for p in workdir.iterdir()] == ["labs"] and [p.name for p in (workdir / "labs").iterdir()] == ["lab"]


def test_history_survives_a_restart(lab):
    session, client = lab
    client.post("/generate", json={"prompt": "A red cube", "seed": 3, "condition": SKIP, "group": "restart"})
    before = client.get("/history").json()
    assert before[-1]["group"] == "restart" and before[-1]["row"]["item_id"] == "skip/p000_s3"
    restarted = LabSession(ZImageModule(weights="tiny-random"), session.folder, sampler=SAMPLER, accelerator="cpu")
    second = TestClient(create_app(restarted))
    assert second.get("/history").json() == before
    assert [p.text for p in restarted.study.prompts] == [p.text for p in session.study.prompts]
    again = second.post("/generate", json={"prompt": "A red cube", "seed": 3, "condition": SKIP}).json()
    assert again["resumed"] and again["row"]["item_id"] == "skip/p000_s3"
    with pytest.raises(ValueError, match="another baseline"):
        LabSession(ZImageModule(weights="tiny-random"), session.folder, sampler={**SAMPLER, "steps": 3})


def test_serve_takes_any_model_option_and_binds_locally(tmp_path):
    from llm_dit.lab.serve import build_parser

    options = build_parser().parse_args(["--model.weights", "tiny-random", "--model.dtype", "bfloat16",
                                         "--model.load.tiny_seed", "3", "--folder", str(tmp_path / "lab")])
    assert options.host == "127.0.0.1"
    assert (options.model.weights, options.model.dtype, options.model.load.tiny_seed) == ("tiny-random", "bfloat16", 3)


def test_serve_takes_a_study_config_as_model_and_baseline(tmp_path):
    from llm_dit.lab.serve import build_lab

    config = Path(__file__).resolve().parents[1] / "configs" / "baseline.yaml"
    app, options = build_lab(["--config", str(config), "--model.weights", "tiny-random", "--folder", str(tmp_path / "lab"),
                              "--accelerator", "cpu"])
    client = TestClient(app)
    assert client.get("/health").json()["weights"] == "tiny-random"
    row = client.post("/generate", json={"prompt": "A cat", "seed": 1}).json()["row"]
    sampler = yaml.safe_load(config.read_text())["data"]["init_args"]["study"]["sampler"]
    assert {key: row[key] for key in sampler} == sampler  # the study's baseline is the lab's


def test_the_lab_runs_on_saved_embeddings(tmp_path):
    """A lab over saved embeddings never builds the encoder; a prompt that was not encoded is a 422."""
    from llm_dit.encode_study import encode_batches

    study = Study(name="enc", prompts=["A red cube"], seeds=[1], sampler=SAMPLER)
    encode_batches(ZImageModule(weights="tiny-random"), [study.items()], tmp_path / "emb", device="cpu")
    session = LabSession(ZImageModule(weights="tiny-random", embeddings=str(tmp_path / "emb")), tmp_path / "lab",
                         sampler=SAMPLER, accelerator="cpu")
    client = TestClient(create_app(session))
    assert session.module.text_encoder is None and client.get("/memory").json()["components"]["text_encoder"] is None
    assert client.post("/generate", json={"prompt": "A red cube", "seed": 1}).status_code == 200
    missing = client.post("/generate", json={"prompt": "A blue cube", "seed": 1})
    assert missing.status_code == 422 and "no saved embedding for prompt 'A blue cube'" in missing.json()["detail"]
    assert client.post("/generate", json={"prompt": "A red cube", "seed": 2}).status_code == 200  # still serving


def test_a_lab_cannot_free_its_encoder(tmp_path):
    with pytest.raises(ValueError, match="--model.embeddings"):
        LabSession(ZImageModule(weights="tiny-random", predict={"free_encoder_after_encoding": True}), tmp_path / "lab")
    assert not (tmp_path / "lab").exists()
