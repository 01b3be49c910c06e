"""Loading from every layout gives bit-identical weights and images; errors say what to do.

The tiny preset is saved in each layout a user meets (diffusers folder, ComfyUI
single files with the original key names, prefixed/renamed variants), loaded back
with the real loading code, and compared with the original tensor by tensor and
through diffusers' own ZImagePipeline.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import ZImagePipeline
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3Model

from llm_dit.models import (
    MissingComponentError,
    OutOfMemoryAdviceError,
    PickleCheckpointError,
    Placement,
    ShapeMismatchError,
    SingleFileWeights,
    WrongModelError,
    apply_placement,
    build_tiny_components,
    check_weights_source,
    export_single_files,
    free_text_encoder,
    identify_checkpoint,
    load_components,
    on_device,
    out_of_memory_advice,
)
from llm_dit.models.single_file import load_single_file
from llm_dit.models.tiny import TINY_TEXT_ENCODER_CONFIG

ROLES = ("transformer", "text_encoder", "vae")


# ----- helpers -------------------------------------------------------------------------


def generate(components) -> torch.Tensor:
    pipe = ZImagePipeline(
        scheduler=copy.deepcopy(components.scheduler), vae=components.vae, text_encoder=components.text_encoder,
        tokenizer=components.tokenizer, transformer=components.transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe("a red fox in the snow", height=64, width=64, num_inference_steps=2,
                generator=torch.Generator().manual_seed(0), output_type="pt").images


def assert_same_weights(expected, loaded) -> None:
    for role in ROLES:
        want, got = getattr(expected, role).state_dict(), getattr(loaded, role).state_dict()
        assert want.keys() == got.keys(), role
        for key, tensor in want.items():
            assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), f"{role}.{key}"


def rewrite(path: Path, transform, keep_metadata: bool = True, target: Path | None = None) -> Path:
    """Rewrite a safetensors file through `transform(dict) -> dict` (keys/values), optionally without metadata."""
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata() if keep_metadata else None
    target = target or path
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(transform(tensors), str(target), metadata)
    return target


@pytest.fixture(scope="module", autouse=True)
def tokenizer_loaded_once():
    """Parsing the 11 MB tokenizer.json is most of a tiny load; the tests share one instance."""
    import llm_dit.models.loading as loading
    import llm_dit.models.tiny as tiny

    shared = tiny.load_bundled_tokenizer()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loading, "load_bundled_tokenizer", lambda: shared)
        patch.setattr(tiny, "load_bundled_tokenizer", lambda: shared)
        yield shared


@pytest.fixture(scope="module")
def reference():
    """The tiny model and its image: what every layout must reproduce exactly."""
    components = build_tiny_components(seed=0)
    return components, generate(components)


@pytest.fixture(scope="module")
def single_files(tmp_path_factory, reference) -> Path:
    folder = tmp_path_factory.mktemp("single")
    export_single_files(reference[0], folder)
    return folder


@pytest.fixture
def single_copy(tmp_path, single_files) -> Path:
    """A private copy the test may damage."""
    return Path(shutil.copytree(single_files, tmp_path / "files"))


# ----- every layout, bit-identical ---------------------------------------------------------


def test_diffusers_folder_round_trip(tmp_path, reference):
    components, image = reference
    for role in (*ROLES, "tokenizer", "scheduler"):
        getattr(components, role).save_pretrained(tmp_path / role)
    loaded = load_components(str(tmp_path))
    assert_same_weights(components, loaded)
    assert torch.equal(generate(loaded), image)


def test_single_files_round_trip(single_files, reference):
    components, image = reference
    assert {p.name for p in single_files.iterdir()} == {
        "z_image_turbo_bf16.safetensors", "qwen_3_4b.safetensors", "ae.safetensors"}
    loaded = load_components(str(single_files))
    assert_same_weights(components, loaded)
    assert torch.equal(generate(loaded), image)
    assert "single files" in loaded.source


def test_single_files_use_original_key_names(single_files):
    keys = {role: safe_open(str(single_files / name), "pt").keys()
            for role, name in (("transformer", "z_image_turbo_bf16.safetensors"),
                               ("text_encoder", "qwen_3_4b.safetensors"), ("vae", "ae.safetensors"))}
    assert "layers.0.attention.qkv.weight" in keys["transformer"]
    assert "x_embedder.weight" in keys["transformer"] and "final_layer.linear.weight" in keys["transformer"]
    assert "model.embed_tokens.weight" in keys["text_encoder"]
    assert "decoder.up.3.upsample.conv.weight" in keys["vae"] and "encoder.mid.attn_1.q.weight" in keys["vae"]
    assert identify_checkpoint(keys["transformer"])[1] == "transformer"
    assert identify_checkpoint(keys["text_encoder"])[1] == "text_encoder"
    assert identify_checkpoint(keys["vae"])[1] == "vae"


def test_comfy_models_tree_with_prefixes_renames_and_no_stored_config(tmp_path, single_files, reference):
    """ComfyUI's models/ layout, other file names, key prefixes, no config in the headers."""
    components, image = reference
    models = tmp_path / "models"
    rewrite(single_files / "z_image_turbo_bf16.safetensors",
            lambda t: {f"model.diffusion_model.{k}": v for k, v in t.items()},
            keep_metadata=False, target=models / "diffusion_models" / "my_zimage.safetensors")
    rewrite(single_files / "qwen_3_4b.safetensors", lambda t: t, keep_metadata=False,
            target=models / "text_encoders" / "qwen_3_4b.safetensors")
    rewrite(single_files / "ae.safetensors", lambda t: {f"vae.{k}": v for k, v in t.items()},
            keep_metadata=False, target=models / "vae" / "flux_vae.safetensors")

    with pytest.raises(ShapeMismatchError, match="norm_num_groups=32 does not divide"):
        load_single_file(models / "vae" / "flux_vae.safetensors", "vae")  # group count is not in the weights

    spec = SingleFileWeights.from_folder(models)
    spec.vae_config = {"norm_num_groups": 4}
    loaded = load_components(spec)
    assert_same_weights(components, loaded)
    assert list(loaded.transformer.config.axes_dims) == [8, 12, 12]  # Turbo's split scaled to head_dim 32
    assert torch.equal(generate(loaded), image)


@pytest.mark.parametrize("prefix", ["model.", ""])
@pytest.mark.parametrize("lm_head", [True, False])
def test_text_encoder_file_with_or_without_prefix_and_lm_head(tmp_path, single_files, reference, prefix, lm_head):
    def variant(tensors):
        out = {prefix + k.removeprefix("model."): v for k, v in tensors.items()}
        if lm_head:
            out["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
        return out

    path = rewrite(single_files / "qwen_3_4b.safetensors", variant, target=tmp_path / "qwen.safetensors")
    encoder = load_single_file(path, "text_encoder", torch.float32)
    want = reference[0].text_encoder.state_dict()
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in want.items())
    assert encoder.state_dict().keys() == want.keys()


def test_dict_spec_bf16_load(single_files, reference):
    spec = {role: str(single_files / name) for role, name in
            (("transformer", "z_image_turbo_bf16.safetensors"), ("text_encoder", "qwen_3_4b.safetensors"),
             ("vae", "ae.safetensors"))}
    loaded = load_components(spec, dtype=torch.bfloat16)
    for role in ROLES:
        want = getattr(reference[0], role).state_dict()
        got = getattr(loaded, role).state_dict()
        for key, tensor in want.items():
            assert got[key].dtype == torch.bfloat16 and torch.equal(got[key], tensor.to(torch.bfloat16)), key


def test_text_encoder_override(tmp_path, single_files, reference):
    config = Qwen3Config(vocab_size=151669, **TINY_TEXT_ENCODER_CONFIG)
    torch.manual_seed(1)
    alternative = Qwen3Model(config).eval()
    alternative.save_pretrained(tmp_path / "embedding")
    loaded = load_components("tiny-random", text_encoder_override=str(tmp_path / "embedding"))
    assert all(torch.equal(loaded.text_encoder.state_dict()[k], v) for k, v in alternative.state_dict().items())
    assert "text_encoder=" in loaded.source

    from_file = load_components("tiny-random", seed=3, text_encoder_override=str(single_files / "qwen_3_4b.safetensors"))
    want = reference[0].text_encoder.state_dict()
    assert all(torch.equal(from_file.text_encoder.state_dict()[k], v) for k, v in want.items())

    wide = Qwen3Model(Qwen3Config(**{**config.to_dict(), "hidden_size": 48, "head_dim": 24}))
    wide.save_pretrained(tmp_path / "wide")
    with pytest.raises(ShapeMismatchError, match=r"hidden size 48 .* takes 32-wide"):
        load_components("tiny-random", text_encoder_override=str(tmp_path / "wide"))


# ----- refusals and error messages ---------------------------------------------------------


def test_pickle_checkpoints_are_refused_unless_allowed(tmp_path, single_files, reference):
    with safe_open(str(single_files / "z_image_turbo_bf16.safetensors"), "pt") as handle:
        torch.save({k: handle.get_tensor(k) for k in handle.keys()}, tmp_path / "zimage.pt")
    spec = SingleFileWeights(transformer=str(tmp_path / "zimage.pt"),
                             text_encoder=str(single_files / "qwen_3_4b.safetensors"),
                             vae=str(single_files / "ae.safetensors"))
    with pytest.raises(PickleCheckpointError, match="allow_pickle=True"):
        load_components(spec)
    loaded = load_components(spec, allow_pickle=True)
    assert_same_weights(reference[0], loaded)


def test_pickle_only_diffusers_folder_is_refused(tmp_path, reference):
    for role in ROLES:
        getattr(reference[0], role).save_pretrained(tmp_path / role)
    for weights in (tmp_path / "vae").glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(PickleCheckpointError, match=r"vae only has pickle weights.*allow_pickle=True"):
        check_weights_source(str(tmp_path))


def test_missing_components_are_named(tmp_path, single_copy):
    (single_copy / "ae.safetensors").unlink()
    with pytest.raises(MissingComponentError, match=r"no FLUX VAE checkpoint .* ae\.safetensors"):
        check_weights_source(str(single_copy))
    with pytest.raises(MissingComponentError, match=r"ae\.safetensors does not exist"):
        load_components(SingleFileWeights(transformer=str(single_copy / "z_image_turbo_bf16.safetensors"),
                                          text_encoder=str(single_copy / "qwen_3_4b.safetensors"),
                                          vae=str(single_copy / "ae.safetensors")))
    (tmp_path / "diffusers" / "transformer").mkdir(parents=True)
    (tmp_path / "diffusers" / "text_encoder").mkdir()
    with pytest.raises(MissingComponentError, match="missing vae/"):
        check_weights_source(str(tmp_path / "diffusers"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_weights_source("/no/such/folder")
    check_weights_source("Tongyi-MAI/Z-Image-Turbo")  # a hub id: checked when loading (needs network)
    with pytest.raises(ValueError, match="holds one component"):
        check_weights_source(str(single_copy / "qwen_3_4b.safetensors"))


def test_shape_mismatch_names_tensor_and_both_shapes(single_copy):
    path = single_copy / "z_image_turbo_bf16.safetensors"
    expected = r"tensor 'x_pad_token' has shape \(1, 64\) in the checkpoint but .* expects \(1, 96\) \(and 84 more"
    with pytest.raises(ShapeMismatchError, match=expected):
        load_single_file(path, "transformer", config={"dim": 96, "n_heads": 3})

    def damage(tensors):
        tensors["layers.1.feed_forward.w1.weight"] = torch.zeros(100, 64)
        return tensors

    rewrite(path, damage)
    expected = r"'layers\.1\.feed_forward\.w1\.weight' has shape \(100, 64\) .* \(170, 64\)"
    with pytest.raises(ShapeMismatchError, match=expected):
        load_components(str(single_copy))


def test_diffusers_folder_config_weights_mismatch_names_tensor(tmp_path, reference):
    for role in (*ROLES, "tokenizer", "scheduler"):
        getattr(reference[0], role).save_pretrained(tmp_path / role)
    config_file = tmp_path / "text_encoder" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "intermediate_size": 80}))
    expected = r"tensor 'layers\.0\.mlp\.\w+_proj\.weight' has shape \((64, 32|32, 64)\) but text_encoder/config\.json"
    with pytest.raises(ShapeMismatchError, match=expected):
        load_components(str(tmp_path))


def test_checkpoint_of_another_model_is_recognized(tmp_path, single_copy):
    flux = {"double_blocks.0.img_attn.qkv.weight": torch.zeros(3, 1), "img_in.weight": torch.zeros(1, 1)}
    save_file(flux, str(single_copy / "z_image_turbo_bf16.safetensors"))
    with pytest.raises(WrongModelError, match=r"holds a FLUX transformer .* not a Z-Image transformer"):
        check_weights_source(str(single_copy))  # caught from the header alone, before anything loads
    with pytest.raises(WrongModelError, match=r"holds a VAE .* not a Qwen3 text encoder"):
        load_single_file(single_copy / "ae.safetensors", "text_encoder")


def test_missing_tensor_is_reported(single_copy):
    rewrite(single_copy / "ae.safetensors", lambda t: {k: v for k, v in t.items() if "decoder.conv_out" not in k})
    expected = r"'decoder\.conv_out\.weight', which fixes the FLUX VAE's size, is missing"
    with pytest.raises(ShapeMismatchError, match=expected):
        load_components(str(single_copy))


# ----- placement -----------------------------------------------------------------------


def test_placement_sets_dtype_per_component_and_tiling():
    placement = Placement(text_encoder_dtype="bf16", transformer_dtype=torch.float32, vae_dtype="float16",
                          vae_tiling=True)
    assert placement.text_encoder_dtype == "bfloat16" and placement.transformer_dtype == "float32"
    components = load_components("tiny-random", placement=placement)
    assert next(components.text_encoder.parameters()).dtype == torch.bfloat16
    assert next(components.transformer.parameters()).dtype == torch.float32
    assert next(components.vae.parameters()).dtype == torch.float16
    assert components.vae.use_tiling
    assert Placement.everything_on("cpu", "bf16").vae_dtype == "bfloat16"
    apply_placement(components, Placement(vae_dtype="float32"))
    assert next(components.vae.parameters()).dtype == torch.float32 and not components.vae.use_tiling


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"transformer_dtype": "int8"}, "unknown dtype 'int8'"),
        ({"vae_device": "meta"}, "free_text_encoder"),
        ({"text_encoder_device": "gpu0"}, "not a device name"),
        pytest.param({"transformer_device": "cuda"}, "no CUDA device",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")),
    ],
)
def test_placement_validation(fields, message):
    with pytest.raises(ValueError, match=message):
        Placement(**fields)


def test_free_text_encoder():
    components = load_components("tiny-random")
    free_text_encoder(components)
    assert all(p.device.type == "meta" for p in components.text_encoder.parameters())
    with pytest.raises(RuntimeError, match="freed by free_text_encoder"):
        components.text_encoder(input_ids=torch.tensor([[1, 2]]))
    free_text_encoder(components)  # idempotent
    apply_placement(components, Placement(text_encoder_dtype="bfloat16"))  # a freed encoder is left alone
    assert components.describe()["transformer"]["parameters"] > 0


def test_offload_returns_component_to_cpu():
    components = load_components("tiny-random")
    placement = Placement(offload=True)
    assert placement.home_for("transformer") == torch.device("cpu")
    with on_device(components, "transformer", placement) as transformer:
        assert transformer is components.transformer
    assert next(components.transformer.parameters()).device.type == "cpu"


def test_out_of_memory_gets_advice():
    with pytest.raises(OutOfMemoryAdviceError) as caught:
        with out_of_memory_advice("loading the transformer", Placement()):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")
    message = str(caught.value)
    assert isinstance(caught.value, torch.OutOfMemoryError)
    for advice in ("loading the transformer", "vae_tiling=True", "offload=True", "free_text_encoder", "bfloat16"):
        assert advice in message
    with pytest.raises(OutOfMemoryAdviceError, match="can't allocate memory"):
        with out_of_memory_advice("loading the vae"):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:116] DefaultCPUAllocator: can't allocate memory")
    with pytest.raises(RuntimeError, match="^unrelated$"):
        with out_of_memory_advice("anything"):
            raise RuntimeError("unrelated")


def test_stored_config_is_json_in_header(single_files):
    with safe_open(str(single_files / "ae.safetensors"), "pt") as handle:
        config = json.loads(handle.metadata()["llm_dit.config"])
    assert config["latent_channels"] == 16 and config["norm_num_groups"] == 4


def test_real_sizes_infer_the_real_configs():
    """On meta tensors (no memory): Turbo-sized files convert both ways and infer Turbo's configs."""
    from diffusers import AutoencoderKL, ZImageTransformer2DModel

    from llm_dit.models import single_file as sf

    with sf.parameters_on_meta():
        transformer = ZImageTransformer2DModel(**sf.ZIMAGE_TURBO_TRANSFORMER_CONFIG)
        encoder = Qwen3Model(Qwen3Config(**sf.QWEN3_4B_CONFIG))
        vae = AutoencoderKL(**sf.FLUX_VAE_CONFIG)
    assert 6.15e9 < sum(p.numel() for p in transformer.parameters()) < 6.16e9
    cases = [
        (transformer, sf.transformer_to_original, sf.transformer_to_diffusers, sf.infer_transformer_config,
         sf.ZIMAGE_TURBO_TRANSFORMER_CONFIG),
        (encoder, sf.text_encoder_to_comfy, lambda sd, kind: sf.text_encoder_to_hf(sd), sf.infer_text_encoder_config,
         sf.QWEN3_4B_CONFIG),
        (vae, sf.vae_to_original, sf.vae_to_diffusers, sf.infer_vae_config, sf.FLUX_VAE_CONFIG),
    ]
    for module, to_file, from_file, infer, real_config in cases:
        written = to_file(module.state_dict())
        kind, role, _ = identify_checkpoint(written)
        back = from_file(written, kind)
        sf.check_state_dict(module, back, Path("file.safetensors"), role)
        inferred = infer(back)
        assert inferred == {key: real_config[key] for key in inferred}, role


@pytest.mark.parametrize("damage", ["truncate", "garbage_header", "empty"])
def test_damaged_safetensors_are_named_before_loading(tmp_path, single_copy, reference, damage):
    """A cut-off download or a damaged header is found from the header alone, naming the file."""
    from llm_dit.models.single_file import CorruptCheckpointError

    path = single_copy / "ae.safetensors"
    data = path.read_bytes()
    damaged = {"truncate": data[: len(data) // 2], "garbage_header": b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + data[24:],
               "empty": b""}[damage]
    path.write_bytes(damaged)
    with pytest.raises(CorruptCheckpointError, match=r"ae\.safetensors is not a readable \.safetensors file .* truncated or corrupt"):
        check_weights_source(str(single_copy))
    folder = tmp_path / "diffusers"
    for role in (*ROLES, "tokenizer", "scheduler"):
        getattr(reference[0], role).save_pretrained(folder / role)
    weights = next((folder / "vae").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CorruptCheckpointError, match=r"vae/.*\.safetensors is not a readable .* the file holds"):
        check_weights_source(str(folder))
