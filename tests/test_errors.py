"""Bad input ends in exactly one `error:` line (field, value, rule, fix), exit code 2, before any model loads.

Each case runs the real console entry (`llm_dit.cli.main`) in-process on the
baseline config with one bad override, one case per rule. The model loader
that ZImageModule calls is replaced by one that fails the test, so "before any
model loads" is checked, not assumed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_dit.cli import main

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "configs" / "baseline.yaml"
STUDY = "--data.init_args.study."


def conditions(*specs: dict) -> list[str]:
    return [STUDY + "conditions", json.dumps(list(specs))]


def surgery(*specs: dict) -> list[str]:
    return conditions({"name": "cut", "surgery": list(specs)})


# (case id, extra arguments, substrings the one error line must hold: the field and the value)
CASES = [
    # sampler
    ("height_not_multiple_of_16", [STUDY + "sampler.height", "72"], ["sampler.height", "72", "nearest: 64"]),
    ("width_zero", [STUDY + "sampler.width", "0"], ["sampler.width", "got 0"]),
    ("steps_zero", [STUDY + "sampler.steps", "0"], ["sampler.steps", "got 0"]),
    ("steps_not_a_number", [STUDY + "sampler.steps", "many"], ["sampler.steps", "'many'"]),
    ("shift_not_positive", [STUDY + "sampler.shift", "-1.5"], ["sampler.shift", "-1.5"]),
    ("guidance_negative", [STUDY + "sampler.guidance_scale", "-1"], ["sampler.guidance_scale", "-1"]),
    ("sampler_key_misspelled", [STUDY + "sampler.stpes", "4"], ["sampler", "'stpes'", "did you mean 'steps'"]),
    ("negative_prompt_not_text", [STUDY + "sampler.negative_prompt", "5"], ["sampler.negative_prompt", "5"]),
    ("skip_layer_guidance_no_layers", [STUDY + "sampler.skip_layer_guidance", "{scale: 2.8}"],
     ["skip_layer_guidance", "layers"]),
    ("skip_layer_guidance_not_mapping", [STUDY + "sampler.skip_layer_guidance", "7"],
     ["sampler.skip_layer_guidance", "7"]),
    # encoding
    ("encoding_key_misspelled", [STUDY + "encoding.hiden_layer", "-2"], ["encoding", "'hiden_layer'"]),
    ("long_prompt_mode_unknown", [STUDY + "encoding.long_prompt_mode", "squash"], ["long_prompt_mode", "'squash'"]),
    ("layer_combine_unknown", [STUDY + "encoding.layer_combine", "median"], ["layer_combine", "'median'"]),
    ("max_length_zero", [STUDY + "encoding.max_length", "0"], ["encoding.max_length", "got 0"]),
    ("hidden_layer_empty_list", [STUDY + "encoding.hidden_layer", "[]"], ["encoding.hidden_layer", "empty list"]),
    ("hidden_layer_unknown_form", [STUDY + "encoding.hidden_layer", "last"], ["encoding.hidden_layer", "'last'"]),
    ("hidden_layer_out_of_range", [STUDY + "encoding.hidden_layer", "-40"], ["hidden_layer", "-40", "valid"]),
    ("system_prompt_not_text", [STUDY + "encoding.system_prompt", "{role: artist}"], ["system_prompt", "artist"]),
    ("force_think_block_not_bool", [STUDY + "encoding.force_think_block", "maybe"], ["force_think_block", "'maybe'"]),
    # the study
    ("study_kind_unknown", [STUDY + "kind", "colour"], ["study.kind", "'colour'"]),
    ("study_name_dotdot", [STUDY + "name", ".."], ["study.name", "'..'"]),
    ("study_name_empty", [STUDY + "name", ""], ["study.name", "''"]),
    ("study_name_slash", [STUDY + "name", "a/b"], ["study.name", "'a/b'"]),
    ("study_key_misspelled", [STUDY + "sedes", "[1]"], ["study.sedes", "check its spelling"]),
    ("seeds_empty", [STUDY + "seeds", "[]"], ["study.seeds", "empty"]),
    ("seeds_repeat", [STUDY + "seeds", "[7, 7]"], ["study.seeds", "[7]"]),
    ("seed_negative", [STUDY + "seeds", "[-1]"], ["study.seeds", "-1", "0..2**64-1"]),
    ("seed_too_large", [STUDY + "seeds", f"[{2**64}]"], ["study.seeds", str(2**64), "0..2**64-1"]),
    ("seed_not_integer", [STUDY + "seeds", "[1.5]"], ["seeds", "1.5"]),
    ("prompts_empty", [STUDY + "prompts", "[]", STUDY + "prompts_file", "null"], ["no prompts", "study.prompts"]),
    ("prompt_blank", [STUDY + "prompts", '["  "]'], ["prompt 0", "empty"]),
    ("prompts_file_missing", [STUDY + "prompts_file", "/no/such/prompts.txt"], ["prompts_file", "/no/such/prompts.txt"]),
    ("variables_key_malformed", [STUDY + "variables", '{"colour.red": [1]}'], ["study.variables", "'colour.red'"]),
    ("variables_values_empty", [STUDY + "variables", '{"sampler.shift": []}'], ["study.variables", "'sampler.shift'"]),
    # conditions
    ("condition_name_dotdot", conditions({"name": ".."}), ["condition name", "'..'"]),
    ("condition_name_empty", conditions({"name": ""}), ["condition name", "''"]),
    ("condition_name_dot", conditions({"name": "."}), ["condition name", "'.'"]),
    ("control_name_with_slash", [STUDY + "control", "x/y"], ["condition name", "'x/y'"]),
    ("condition_names_repeat", conditions({"name": "a"}, {"name": "a"}), ["study.conditions", "'a'"]),
    ("prompt_transform_unknown", conditions({"name": "t", "prompt_transform": "zap"}), ["condition 't'", "'zap'"]),
    # surgery
    ("surgery_variant_unknown", surgery({"variant": "zap"}), ["surgery variant", "'zap'"]),
    ("surgery_variant_missing", surgery({"use_layers": 1}), ["no 'variant'", "use_layers"]),
    ("surgery_option_unknown", surgery({"variant": "skip", "speed": 2}), ["'skip'", "speed"]),
    ("surgery_option_missing", surgery({"variant": "truncate"}), ["'truncate'", "use_layers"]),
    ("surgery_option_bad_value", surgery({"variant": "truncate", "use_layers": -1}), ["use_layers", "-1"]),
    ("surgery_target_unknown", surgery({"variant": "skip", "target": "decoder"}), ["target", "'decoder'"]),
    ("surgery_conflict", surgery({"variant": "skip"}, {"variant": "truncate", "use_layers": 1}),
     ["conflicting surgery", "truncate"]),
    ("surgery_index_out_of_range", surgery({"variant": "skip_layers", "layers": [7]}), ["layer index 7", "valid 0..1"]),
    ("style_adapter_missing", surgery({"variant": "style_adapter", "path": "/no/adapter"}),
     ["style adapter", "/no/adapter"]),
    # data module, model, command line
    ("batch_size_zero", ["--data.init_args.batch_size", "0"], ["batch_size", "got 0"]),
    ("batch_size_not_int", ["--data.init_args.batch_size", "four"], ["data.init_args.batch_size", "'four'"]),
    ("max_prompts_zero", ["--data.init_args.max_prompts", "0"], ["max_prompts", "got 0"]),
    ("dtype_unknown", ["--model.dtype", "float8"], ["dtype", "'float8'"]),
    ("weights_missing", ["--model.weights", "/no/such/weights"], ["weights", "/no/such/weights"]),
    ("model_option_unknown", ["--model.init_args.sped", "2"], ["model.init_args.sped", "check its spelling"]),
    ("compile_part_unknown", ["--model.speed.compile", "[gpu]"], ["compile", "gpu"]),
]


@pytest.fixture
def no_model(monkeypatch, tmp_path):
    """Fail the test if anything loads a model; run in an empty folder."""
    loaded = []
    monkeypatch.setattr("llm_dit.module.load_components", lambda *a, **k: loaded.append(a) or pytest.fail("a model loaded"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLM_DIT_DEBUG", raising=False)
    monkeypatch.setattr("sys.argv", ["llm_dit.cli"])
    return loaded


def run_cli(args: list[str], capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    return exit_info.value.code, err.splitlines()


def test_the_table_covers_forty_rules():
    assert len(CASES) + len(FIT_CASES) >= 40
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(("extra", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_error_line(no_model, tmp_path, capsys, extra, expected):
    args = ["predict", "--config", str(BASELINE), "--trainer.default_root_dir", str(tmp_path), *extra]
    code, lines = run_cli(args, capsys)
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 2, lines
    assert len(errors) == 1, lines
    line = errors[0]
    for text in expected:
        assert text in line, f"{text!r} missing from: {line}"
    for noise in ("Namespace(", "Union", "Subtypes", "Traceback", "Given value"):
        assert noise not in "\n".join(lines)
    assert not no_model


FIT_CASES = [
    ("adapter_variant_unknown", ["--model.fit.adapter.variant", "dora"], ["model.fit", "adapter", "one of lora, full, extra_blocks", "'dora'"]),
    ("adapter_rank_zero", ["--model.fit.adapter.rank", "0"], ["adapter.rank", "got 0"]),
    ("fit_resolution_not_multiple_of_16", ["--data.init_args.resolution", "100"], ["resolution", "100", "nearest: 96"]),
]


@pytest.mark.parametrize(("extra", "expected"), [case[1:] for case in FIT_CASES], ids=[case[0] for case in FIT_CASES])
def test_bad_fit_input_is_one_error_line(no_model, tmp_path, capsys, extra, expected):
    config = ROOT / "configs" / "refiner_style_adapter.yaml"
    code, lines = run_cli(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path), *extra], capsys)
    (line,) = [line for line in lines if line.startswith("error:")]
    assert code == 2 and all(text in line for text in expected), line
    assert not no_model


def test_prompts_file_that_is_not_a_list(no_model, tmp_path, capsys):
    path = tmp_path / "prompts.json"
    path.write_text('{"prompt": "a cat"}')
    args = ["predict", "--config", str(BASELINE), STUDY + "prompts_file", str(path)]
    code, lines = run_cli(args, capsys)
    assert code == 2 and [line for line in lines if line.startswith("error:")] == [lines[-1]]
    assert "prompts_file" in lines[-1] and "list of prompts" in lines[-1]


def test_yaml_syntax_error_names_the_position(no_model, tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text("data:\n  class_path: llm_dit.data.StudyDataModule\n  init_args: {study: {prompts: [a\n")
    code, lines = run_cli(["predict", "--config", str(config)], capsys)
    (line,) = [line for line in lines if line.startswith("error:")]
    assert code == 2 and "Problems parsing config" in line and "line 3" in line and "fix the YAML" in line


def test_unknown_subcommand(no_model, capsys):
    code, lines = run_cli(["predcit", "--config", str(BASELINE)], capsys)
    (line,) = [line for line in lines if line.startswith("error:")]
    assert code == 2 and "'predcit'" in line and "did you mean 'predict'" in line and "ab-page" in line


def test_missing_config_file(no_model, capsys):
    code, lines = run_cli(["predict", "--config", "/no/such/study.yaml"], capsys)
    assert code == 2
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "/no/such/study.yaml" in errors[0]


def test_debug_shows_the_traceback(no_model, monkeypatch):
    monkeypatch.setenv("LLM_DIT_DEBUG", "1")
    with pytest.raises(ValueError, match="sampler.steps"):
        main(["predict", "--config", str(BASELINE), STUDY + "sampler.steps", "0"])


# ----- safe names: nothing is written outside the run folder ----------------------------


@pytest.mark.parametrize(
    "extra",
    [[STUDY + "name", ".."], conditions({"name": ".."}), conditions({"name": ""}), conditions({"name": "."}),
     conditions({"name": "../escape"}), [STUDY + "name", "/tmp/abs"]],
    ids=["study_dotdot", "condition_dotdot", "condition_empty", "condition_dot", "condition_parent", "study_abs"],
)
def test_unsafe_names_write_nothing(no_model, tmp_path, capsys, extra):
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.yaml").write_text("precious: true\n")
    before = sorted(p for p in tmp_path.rglob("*"))
    args = ["predict", "--config", str(BASELINE), "--trainer.default_root_dir", str(work), *extra]
    code, lines = run_cli(args, capsys)
    assert code == 2
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert (work / "config.yaml").read_text() == "precious: true\n"


# ----- failures only loading can find: still one line ----------------------------------


def export_adapter(transformer, folder: Path) -> str:
    from llm_dit.training import AdapterConfig, TrainableAdapter

    adapter = TrainableAdapter(transformer, AdapterConfig(variant="lora", rank=2))
    path = adapter.export(folder, {"weights": "tiny"})
    adapter.remove()
    return str(path)


def adapter_condition(path: str) -> list[str]:
    return conditions({"name": "styled", "surgery": [{"variant": "style_adapter", "path": path}]})


def test_adapter_for_a_wider_base_is_refused_from_its_header(no_model, tmp_path, capsys):
    from diffusers import ZImageTransformer2DModel

    from llm_dit.models.tiny import TINY_TRANSFORMER_CONFIG

    wider = ZImageTransformer2DModel(**{**TINY_TRANSFORMER_CONFIG, "dim": 96, "n_heads": 3})
    path = export_adapter(wider, tmp_path / "wide")
    code, lines = run_cli(["predict", "--config", str(BASELINE), "--model.weights", "tiny-random", *adapter_condition(path)], capsys)
    assert code == 2
    (line,) = [line for line in lines if line.startswith("error:")]
    assert path in line and "width 96" in line and "is 64" in line
    assert not no_model


def test_damaged_adapter_file_is_named_at_config_time(no_model, tmp_path, base_transformer, capsys):
    path = export_adapter(base_transformer, tmp_path / "adapter")
    tensors = Path(path) / "adapter.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-10])
    code, lines = run_cli(["predict", "--config", str(BASELINE), *adapter_condition(path)], capsys)
    (line,) = [line for line in lines if line.startswith("error:")]
    assert code == 2 and "adapter.safetensors is not a readable .safetensors file" in line


def test_damaged_weights_are_named_before_loading(no_model, tmp_path, capsys):
    from llm_dit.models import build_tiny_components, export_single_files

    export_single_files(build_tiny_components(seed=0), tmp_path / "weights")
    vae = tmp_path / "weights" / "ae.safetensors"
    vae.write_bytes(vae.read_bytes()[: vae.stat().st_size // 2])
    code, lines = run_cli(["predict", "--config", str(BASELINE), "--model.weights", str(tmp_path / "weights")], capsys)
    (line,) = [line for line in lines if line.startswith("error:")]
    assert code == 2 and "ae.safetensors" in line and "truncated or corrupt" in line


def test_adapter_for_other_weights_of_the_same_size_stops_before_the_first_image(tmp_path, base_transformer, capsys,
                                                                              monkeypatch):
    """Same shapes, other weights (tiny_seed 1): only the loaded model can tell; still one line, no image."""
    monkeypatch.setattr("sys.argv", ["llm_dit.cli"])
    path = export_adapter(base_transformer, tmp_path / "adapter")
    args = ["predict", "--config", str(BASELINE), "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--model.weights", "tiny-random", "--model.load.tiny_seed", "1", STUDY + "sampler.steps", "1", *adapter_condition(path)]
    code, lines = run_cli(args, capsys)
    (line,) = [line for line in lines if line.startswith("error:")]
    assert code == 2 and "was made for base model" in line and path in line
    assert not list((tmp_path / "runs").rglob("*.png"))


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        (lambda: __import__("torch").OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB"),
         ["out of memory", "12.00 GiB", "batch_size"]),
        (lambda: OSError(28, "No space left on device", "/runs/images/control/p000_s42.png"),
         ["disk full", "p000_s42.png", "re-run"]),
        (lambda: __import__("llm_dit.models.single_file", fromlist=["x"]).CorruptCheckpointError(
            "/w/ae.safetensors is not a readable .safetensors file"), ["/w/ae.safetensors"]),
    ],
    ids=["out_of_memory", "disk_full", "corrupt_at_load"],
)
def test_faults_while_loading_are_one_line(tmp_path, capsys, monkeypatch, fault, words):
    monkeypatch.setattr("sys.argv", ["llm_dit.cli"])
    monkeypatch.delenv("LLM_DIT_DEBUG", raising=False)

    def fail(*args, **kwargs):
        raise fault()

    monkeypatch.setattr("llm_dit.module.load_components", fail)
    args = ["predict", "--config", str(BASELINE), "--trainer.default_root_dir", str(tmp_path)]
    code, lines = run_cli(args, capsys)
    (line,) = [line for line in lines if line.startswith("error:")]
    assert code == 2 and all(word in line for word in words), line
    monkeypatch.setenv("LLM_DIT_DEBUG", "1")
    with pytest.raises(type(fault())):
        main(args)


def test_a_bug_after_the_start_keeps_its_traceback(tmp_path, monkeypatch):
    """A ValueError from inside the run is not the user's input: it is shown as a traceback."""
    monkeypatch.setattr("sys.argv", ["llm_dit.cli"])
    monkeypatch.delenv("LLM_DIT_DEBUG", raising=False)
    monkeypatch.setattr("llm_dit.module.load_components", lambda *a, **k: (_ for _ in ()).throw(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        main(["predict", "--config", str(BASELINE), "--trainer.default_root_dir", str(tmp_path)])


# ----- the command itself -------------------------------------------------------------


def test_help_lists_every_subcommand_once_under_its_real_name(capsys, monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    from llm_dit.cli import SUBCOMMANDS, TOOLS

    assert set(SUBCOMMANDS) == set(LightningCLI.subcommands()) | set(TOOLS)
    monkeypatch.setattr("sys.argv", ["cli.py", "--help"])
    main()
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m llm_dit.cli ") and "cli.py" not in out
    for name in SUBCOMMANDS:
        (line,) = [line for line in out.splitlines() if line.split()[:1] == [name]]
        assert len(line) <= 120


def test_subcommand_help_names_the_module_and_no_args_warning(capsys, monkeypatch, recwarn):
    monkeypatch.setattr("sys.argv", ["cli.py", "predict", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m llm_dit.cli ")
    assert not [w for w in recwarn if "args parameter" in str(w.message)]
