"""Every YAML in configs/ parses with the real CLI, and each study config says what its seed study says."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llm_dit.encoding.options import EncodingOptions
from llm_dit.encoding.template import build_pieces, tokenize_chat
from llm_dit.study import Study, load_prompts_file

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
SEEDS = [42, 123, 456, 789, 1000]
STUDY_DATA = "llm_dit.data.StudyDataModule"
# name -> (kind, control, conditions, prompts, seeds). Every study runs on the synthetic world's prompts
# (configs/prompts/world_*.txt), sized to finish in a few minutes on 2 CPU cores (each config's header).
SEED_STUDIES = {
    "hidden_layer": ("hidden_layer", "hidden_layer=-2", 8, 20, SEEDS),
    "think_block": ("think_block", "none", 8, 20, SEEDS),
    "refiner_skip": ("refiner", "default", 2, 20, SEEDS),
    "refiner_depth": ("refiner", "default", 5, 20, SEEDS),
    "refiner_layerwise": ("refiner", "default", 3, 20, SEEDS),
    "shift_steps": ("shift_steps", "shift=3.0,steps=8", 56, 20, [42]),
    "long_prompt": ("long_prompt", "truncate", 4, 20, [42]),
    "token_importance": ("token_importance", "baseline", 8, 20, SEEDS),
    "system_prompt": ("system_prompt", "none", 6, 20, SEEDS),
}
PROMPT_FILES = {"standard_50.txt": 50, "think_block.txt": 30, "shift_steps.txt": 10, "system_prompt.txt": 20}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def study_dict(name: str) -> dict:
    return load(ROOT / "configs" / f"{name}.yaml")["data"]["init_args"]["study"]


@pytest.fixture(scope="module")
def studies() -> dict[str, Study]:
    return {name: Study(**study_dict(name)) for name in SEED_STUDIES}


@pytest.fixture(scope="module")
def tokenizer():
    from llm_dit.models import load_bundled_tokenizer

    return load_bundled_tokenizer()


def test_every_seed_study_has_a_config():
    assert {p.stem for p in CONFIGS} >= set(SEED_STUDIES)


ADAPTER_CONFIG = ROOT / "configs" / "refiner_style_adapter_predict.yaml"


def adapter_paths(config: dict) -> set[str]:
    study = config.get("data", {}).get("init_args", {}).get("study", {})
    return {s["path"] for c in study.get("conditions", []) for s in c.get("surgery", []) if s["variant"] == "style_adapter"}


@pytest.fixture(scope="module")
def adapter_folder(tmp_path_factory) -> Path:
    """A folder holding what the fit configs (refiner_style_adapter, world_style_adapter) write: the adapter
    (exported from a TrainableAdapter on the default `tiny` model, perturbed as training would; no training)."""
    import torch

    from llm_dit.models.loading import load_components
    from llm_dit.training import AdapterConfig, TrainableAdapter

    folder = tmp_path_factory.mktemp("fitted")
    adapter = TrainableAdapter(load_components("tiny").transformer, AdapterConfig(variant="lora", rank=8))
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(0)))
    for path in set().union(*(adapter_paths(load(config)) for config in CONFIGS)):  # every adapter study's
        adapter.export(folder / path, {"weights": "tiny"})
    adapter.remove()
    return folder


@pytest.fixture
def in_config_folder(request, monkeypatch):
    """Run from the project root, or, for a config that uses a fitted adapter, from where fit wrote it."""
    path = request.node.callspec.params["path"]
    monkeypatch.chdir(request.getfixturevalue("adapter_folder") if adapter_paths(load(path)) else ROOT)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_with_the_cli(path, in_config_folder, monkeypatch, capsys):
    from llm_dit.cli import cli_main

    monkeypatch.setattr("sys.argv", ["llm_dit.cli"])
    subcommand = "predict" if load(path).get("data", {}).get("class_path") == STUDY_DATA else "fit"
    with pytest.raises(SystemExit) as exit_info:
        cli_main([subcommand, "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert "trainer" in printed
    if subcommand == "predict":
        assert_conditions_survive_parsing(load(path), printed)


def assert_conditions_survive_parsing(original: dict, printed: dict) -> None:
    """jsonargparse reads strings inside `dict[str, Any]` values as YAML: a thinking text or
    system prompt with one ': ' in it silently became a mapping. Texts must stay texts."""
    before = {c["name"]: c.get("encoding", {}) for c in original["data"]["init_args"]["study"].get("conditions", [])}
    after = {c["name"]: c.get("encoding", {}) for c in printed["data"]["init_args"]["study"].get("conditions", [])}
    assert after == before


@pytest.mark.parametrize("path", [p for p in CONFIGS if load(p).get("data", {}).get("class_path") == STUDY_DATA], ids=lambda p: p.stem)
def test_study_config_builds_items_and_shrinks(path, in_config_folder):
    from llm_dit.data import StudyDataModule

    config = load(path)
    study = Study(**config["data"]["init_args"]["study"])
    assert study.name == path.stem
    items = study.items()
    assert items and any(item.condition == study.control for item in items)
    sampler = study.baseline_sampler()
    assert (sampler.height, sampler.width) == (64, 64)
    assert config["model"]["weights"] == "tiny"
    shrunk = StudyDataModule(study=config["data"]["init_args"]["study"], batch_size=2, limit_items=3)
    assert len(shrunk.items) == 3


@pytest.mark.parametrize("name", SEED_STUDIES)
def test_seed_study_shape(name, studies):
    kind, control, num_conditions, num_prompts, seeds = SEED_STUDIES[name]
    study = studies[name]
    conditions = [c.name for c in study.resolved_conditions()]
    assert study.kind == kind and study.control == control
    assert len(conditions) == num_conditions and control in conditions
    assert study.seeds == seeds
    assert len(study.resolved_prompts()) == num_prompts


@pytest.mark.parametrize("filename", PROMPT_FILES)
def test_prompt_files_are_full_and_typed(filename):
    prompts = load_prompts_file(ROOT / "configs" / "prompts" / filename)
    assert len(prompts) == PROMPT_FILES[filename]
    assert all(p.type and p.text for p in prompts)
    assert len({p.text for p in prompts}) == len(prompts)


def test_hidden_layer_conditions(studies):
    by_name = {c.name: c for c in studies["hidden_layer"].resolved_conditions()}
    for layer in range(-1, -7, -1):
        assert by_name[f"hidden_layer={layer}"].encoding == {"hidden_layer": layer}
    mixes = [c.encoding for c in by_name.values() if c.encoding.get("layer_combine")]
    assert {"hidden_layer": [-1, -2], "layer_combine": "mean"} in mixes
    assert {"hidden_layer": "all", "layer_combine": "normalized_mean"} in mixes
    first = studies["hidden_layer"].resolved_prompts()[0]
    assert first.text == load_prompts_file(ROOT / "configs" / "prompts" / "world_mixed.txt")[0].text


def test_shift_steps_grid(studies):
    conditions = studies["shift_steps"].resolved_conditions()
    grid = {(c.sampler["shift"], c.sampler["steps"]) for c in conditions}
    assert len(grid) == 56
    assert {s for s, _ in grid} == {1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0}
    assert {n for _, n in grid} == {4, 6, 8, 9, 12, 16, 25}
    control = next(c for c in conditions if c.name == "shift=3.0,steps=8")
    assert control.sampler == {"shift": 3.0, "steps": 8}


def test_think_block_conditions_change_the_template(studies, tokenizer):
    study = studies["think_block"]
    options = {c.name: study.baseline_encoding().with_overrides(c.encoding) for c in study.resolved_conditions()}
    prompt = "A portrait of a young woman"
    assert "<think>" not in _text(prompt, options["none"])
    assert _text(prompt, options["empty"]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    seed_texts = {
        "quality": "High detail, sharp focus, correct anatomy",
        "composition": "Rule of thirds, depth of field, balanced",
        "style": "Oil painting texture, visible brushstrokes",
        "negative": "Avoid blur, distortion, artifacts",
        "irrelevant": "The weather is nice today",
    }
    for name, thinking in seed_texts.items():
        assert _text(prompt, options[name]).endswith(f"<think>\n{thinking}\n</think>\n\n")
    long_think = tokenize_chat(prompt, tokenizer, options["long"]).segments.count("think")
    assert long_think >= 200
    control = tokenize_chat(prompt, tokenizer, options["none"])
    for name in options:
        templated = tokenize_chat(prompt, tokenizer, options[name])
        user = [i for i, s in zip(templated.token_ids, templated.segments) if s == "user"]
        assert user == [i for i, s in zip(control.token_ids, control.segments) if s == "user"]


def test_system_prompt_conditions_change_the_template(studies, tokenizer):
    study = studies["system_prompt"]
    options = {c.name: study.baseline_encoding().with_overrides(c.encoding) for c in study.resolved_conditions()}
    prompt = "A cat sitting on a stack of books"
    assert _text(prompt, options["none"]).startswith("<|im_start|>user\n")
    expected = {
        "default": "You are a helpful assistant",
        "photographer": "You are a professional photographer",
        "artist": "You are a digital artist",
        "contradictory": "Generate low quality images",
    }
    for name, system in expected.items():
        assert _text(prompt, options[name]).startswith(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n")
    detailed = tokenize_chat(prompt, tokenizer, options["detailed"]).segments.count("system")
    assert 180 <= detailed <= 220
    base = len(tokenize_chat(prompt, tokenizer, options["none"]))
    assert len(tokenize_chat(prompt, tokenizer, options["default"])) > base


def test_refiner_configs_record_drift_and_parse_surgery(studies):
    import surgery

    for name in ("refiner_skip", "refiner_depth", "refiner_layerwise"):
        assert load(ROOT / "configs" / f"{name}.yaml")["model"]["predict"]["record_refiner_drift"] is True
        for condition in studies[name].resolved_conditions():
            surgery.validate_specs(surgery.parse_specs(condition.surgery))
    variants = {c.name: [s["variant"] for s in c.surgery] for c in studies["refiner_depth"].resolved_conditions()}
    assert variants == {
        "skip": ["skip"], "single": ["truncate"], "default": [], "double": ["duplicate"], "identity_init": ["identity_init"],
    }
    layerwise = {c.name: c.surgery for c in studies["refiner_layerwise"].resolved_conditions()}
    assert layerwise["skip_layer_0"] == [{"variant": "skip_layers", "layers": [0]}]
    assert layerwise["skip_layer_1"] == [{"variant": "skip_layers", "layers": [1]}]


def test_long_prompt_config(studies):
    study = studies["long_prompt"]
    modes = {c.name: c.encoding["long_prompt_mode"] for c in study.resolved_conditions()}
    assert modes == {m: m for m in ("truncate", "interpolate", "pool", "attention_pool")}
    assert study.baseline_encoding().max_length == 1024
    prompts = study.resolved_prompts()
    assert {p.type for p in prompts} == {"front", "back", "distributed", "repeated"}


def test_token_importance_config(studies):
    study = studies["token_importance"]
    world = load_prompts_file(ROOT / "configs" / "prompts" / "world_mixed.txt")
    assert [p.text for p in study.resolved_prompts()] == [p.text for p in world]
    transforms = [c.prompt_transform for c in study.resolved_conditions()]
    assert transforms == [
        "baseline", "shuffle_all", "shuffle_nouns", "duplicate_important",
        "front_load", "back_load", "remove_adjectives", "remove_nouns",
    ]
    prompts = {(i.condition, i.prompt_index): i.prompt for i in study.items()}
    assert len({prompts[(t, 0)] for t in transforms}) == len(transforms)


def _text(prompt: str, options: EncodingOptions) -> str:
    return "".join(text for _, text in build_pieces(prompt, options))


def test_adapter_predict_config_reads_what_fit_writes(monkeypatch, tmp_path, capsys):
    """The predict config's adapter path is where the fit config's run puts its adapter, and the
    message `fit` ends with says so (relative when run here, with a `cd` from elsewhere)."""
    from types import SimpleNamespace

    from llm_dit.trainer_cli import ADAPTER_PREDICT_CONFIG, StudyCLI
    from llm_dit.training.lifecycle import ADAPTER_FOLDER

    fit = load(ROOT / "configs" / "refiner_style_adapter.yaml")
    written = f"lightning_logs/{fit['data']['init_args']['run_name']}/{ADAPTER_FOLDER}"
    assert adapter_paths(load(ADAPTER_CONFIG)) == {written}
    assert (ROOT / ADAPTER_PREDICT_CONFIG) == ADAPTER_CONFIG
    monkeypatch.chdir(ROOT)
    fitted = SimpleNamespace(model=SimpleNamespace(exported_adapter=ROOT / written),
                             trainer=SimpleNamespace(is_global_zero=True))
    StudyCLI.after_fit(fitted)
    message = capsys.readouterr().out
    assert f"adapter written to {written}/" in message and f"path: {written}," in message
    assert f"predict --config {ADAPTER_PREDICT_CONFIG}" in message
    monkeypatch.chdir(tmp_path)
    StudyCLI.after_fit(fitted)
    assert f"cd {ROOT} && python -m llm_dit.cli predict --config {ADAPTER_CONFIG}" in capsys.readouterr().out
    # A fit run with its own shipped study (the world's style adapter) is pointed at that study.
    monkeypatch.chdir(ROOT)
    world = SimpleNamespace(model=SimpleNamespace(exported_adapter=ROOT / f"lightning_logs/world_style_adapter/{ADAPTER_FOLDER}"),
                            trainer=SimpleNamespace(is_global_zero=True))
    StudyCLI.after_fit(world)
    assert "predict --config configs/world_style_adapter_predict.yaml" in capsys.readouterr().out


def test_adapter_predict_config_runs(adapter_folder, monkeypatch):
    """The shipped adapter study, shrunk the way its comment says (every condition kept), on a fitted adapter."""
    from llm_dit.cli import cli_main

    monkeypatch.chdir(adapter_folder)
    monkeypatch.setattr("sys.argv", ["llm_dit.cli"])
    before = set(adapter_folder.rglob("*"))
    cli_main(["predict", "--config", str(ADAPTER_CONFIG), "--data.init_args.max_prompts", "1",
              "--data.init_args.max_seeds", "1", "--data.init_args.study.sampler.steps", "2",
              "--trainer.accelerator", "cpu", "--trainer.callbacks", "[]", "--trainer.enable_progress_bar", "false"])
    images = adapter_folder / "lightning_logs" / "refiner_style_adapter_predict" / "images"
    pngs = {c: (images / c / "p000_s0.png").read_bytes() for c in ("base", "adapter=0.5", "adapter=1.0", "adapter=1.5")}
    assert len(set(pngs.values())) == 4  # every strength changes the image
    run = adapter_folder / "lightning_logs" / "refiner_style_adapter_predict"
    outside = [p for p in set(adapter_folder.rglob("*")) - before if p != run.parent and run not in (p, *p.parents)]
    assert not outside, f"written outside the run folder: {outside}"


SMOKE_RECIPE = "# Smoke run (keeps every condition): --data.init_args.max_prompts 1 --data.init_args.max_seeds 1"


@pytest.mark.parametrize("path", [p for p in CONFIGS if load(p).get("data", {}).get("class_path") == STUDY_DATA], ids=lambda p: p.stem)
def test_study_config_comment_gives_the_smoke_recipe_that_keeps_every_condition(path):
    """`limit_items N` cuts the condition-major item list: a smoke run of only control images."""
    text = path.read_text()
    assert SMOKE_RECIPE in text.splitlines()
    assert "limit_items" not in text
