"""Single-file checkpoints as ComfyUI users keep them: read, identify, convert, build, write.

Z-Image-Turbo ships as three files outside diffusers:

- ``qwen_3_4b.safetensors``: the Qwen3-4B encoder, HF key names, usually with a
  ``model.`` prefix, with or without ``lm_head.weight``;
- ``z_image_turbo_bf16.safetensors``: the DiT in the original Z-Image key names
  (fused ``attention.qkv``, ``x_embedder``, ``final_layer``), sometimes prefixed
  ``model.diffusion_model.``;
- ``ae.safetensors``: the FLUX.1 VAE in the original BFL/LDM key names.

The files carry no config, so shape-derived config fields are read from the
tensors and the rest come from the real Z-Image-Turbo configs below. Files written
by `export_single_files` also store their full config in the safetensors header,
so any size (the tiny preset included) round-trips exactly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, ZImageTransformer2DModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_vae_checkpoint,
    convert_z_image_transformer_checkpoint_to_diffusers,
)
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3Model

from llm_dit.errors import UserFacing
from llm_dit.models.components import ZImageComponents
from llm_dit.models.shapes import FLUX_VAE_CONFIG, QWEN3_4B_CONFIG, ZIMAGE_TURBO_TRANSFORMER_CONFIG

StateDict = dict[str, torch.Tensor]

# The names ComfyUI's Z-Image-Turbo workflow uses; `export_single_files` writes these.
SINGLE_FILE_NAMES: dict[str, str] = {
    "transformer": "z_image_turbo_bf16.safetensors",
    "text_encoder": "qwen_3_4b.safetensors",
    "vae": "ae.safetensors",
}
ROLE_TITLES = {"transformer": "Z-Image transformer (DiT)", "text_encoder": "Qwen3 text encoder", "vae": "FLUX VAE"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONFIG_METADATA_KEY = "llm_dit.config"
ROLE_METADATA_KEY = "llm_dit.component"


# ----- errors ------------------------------------------------------------------------


# All are UserFacing: found while the model loads (after the run has started), they still
# end in one line (llm_dit.errors), not a traceback.


class PickleCheckpointError(ValueError, UserFacing):
    """A pickle checkpoint was given without `allow_pickle=True`."""


class MissingComponentError(FileNotFoundError, UserFacing):
    """A component's file or folder is not where the weights spec says."""


class ShapeMismatchError(ValueError, UserFacing):
    """A checkpoint's tensors do not fit the config the model is built from."""


class WrongModelError(ValueError, UserFacing):
    """A checkpoint belongs to another model (or another component)."""


class CorruptCheckpointError(ValueError, UserFacing):
    """A .safetensors file is truncated or its header is damaged."""


# ----- reading -----------------------------------------------------------------------


def refuse_pickle(path: Path, allow_pickle: bool) -> None:
    """Pickle files run code when loaded; only read them when the user says so."""
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise PickleCheckpointError(
            f"{path} is a pickle checkpoint ({path.suffix}); loading one can run arbitrary code. "
            f"Convert it to .safetensors, or pass allow_pickle=True if you trust its source."
        )


MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header


def read_safetensors_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file, checked against the file's size.

    A truncated download or a damaged file is found here, by name and before any
    tensor loads, instead of as a deserialization traceback in the middle of a run.
    (Flipped bytes inside the tensor data cannot be seen without a checksum.)
    """
    path = Path(path)

    def corrupt(problem: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"{path} is not a readable .safetensors file ({problem}): it is truncated or corrupt; "
            "download or export it again"
        )

    size = path.stat().st_size
    if size < 8:
        raise corrupt(f"only {size} bytes")
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise corrupt(f"its header claims {length} bytes, the file has {size}")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise corrupt("its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise corrupt("its header is not a mapping")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1]):
            raise corrupt(f"tensor {name!r} has no valid data_offsets")
        end = max(end, offsets[1])
    data = size - 8 - length
    if end != data:
        raise corrupt(f"its tensors need {end} bytes of data, the file holds {data}")
    return header


def read_checkpoint(path: str | Path, dtype: torch.dtype | None = None, allow_pickle: bool = False) -> StateDict:
    """All tensors of a checkpoint on CPU, floating ones cast to `dtype` one at a time.

    Casting tensor by tensor keeps the peak at one copy of the file, not two.
    """
    path = Path(path)
    refuse_pickle(path, allow_pickle)
    if not path.is_file():
        raise MissingComponentError(f"checkpoint file {path} does not exist")
    if path.suffix.lower() == ".safetensors":
        read_safetensors_header(path)
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: _cast(handle.get_tensor(key), dtype) for key in handle.keys()}
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    loaded = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
    return {key: _cast(value, dtype) for key, value in loaded.items() if isinstance(value, torch.Tensor)}


def read_checkpoint_keys(path: str | Path, allow_pickle: bool = False) -> list[str]:
    """Tensor names only (the safetensors header), to identify a file without loading it."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return [key for key in read_safetensors_header(path) if key != "__metadata__"]
    return list(read_checkpoint(path, allow_pickle=allow_pickle))


def read_stored_config(path: str | Path) -> dict[str, Any]:
    """The config `export_single_files` wrote into the header; {} for other files."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return {}
    metadata = read_safetensors_header(path).get("__metadata__") or {}
    return json.loads(metadata[CONFIG_METADATA_KEY]) if CONFIG_METADATA_KEY in metadata else {}


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


# ----- the three files of one model ---------------------------------------------------

# Where ComfyUI keeps each kind of file, relative to its models/ folder.
COMFY_SUBFOLDERS = ("diffusion_models", "unet", "text_encoders", "clip", "vae", "checkpoints")


@dataclass
class SingleFileWeights:
    """The three single-file checkpoints of one Z-Image model, plus optional config overrides.

    The files carry no config: shape-derived fields are read from the tensors and
    the rest default to Z-Image-Turbo's. Overrides fix what the tensors can't say
    (e.g. `vae_config={"norm_num_groups": 32}`) or force a value.
    """

    transformer: str
    """The DiT, e.g. ComfyUI/models/diffusion_models/z_image_turbo_bf16.safetensors."""
    text_encoder: str
    """Qwen3-4B, e.g. ComfyUI/models/text_encoders/qwen_3_4b.safetensors."""
    vae: str
    """The FLUX VAE, e.g. ComfyUI/models/vae/ae.safetensors."""
    tokenizer: str | None = None
    """A tokenizer folder; None uses the bundled Qwen3 tokenizer (identical to Z-Image-Turbo's)."""
    transformer_config: dict[str, Any] | None = None
    text_encoder_config: dict[str, Any] | None = None
    vae_config: dict[str, Any] | None = None

    def files(self) -> dict[str, Path]:
        return {role: Path(getattr(self, role)).expanduser() for role in SINGLE_FILE_NAMES}

    def configs(self) -> dict[str, dict[str, Any] | None]:
        return {role: getattr(self, f"{role}_config") for role in SINGLE_FILE_NAMES}

    def check(self, allow_pickle: bool = False) -> None:
        """Every file exists, is allowed, and (safetensors: header only) holds the component it is named for."""
        for role, path in self.files().items():
            refuse_pickle(path, allow_pickle)
            if not path.is_file():
                raise MissingComponentError(
                    f"{ROLE_TITLES[role]} checkpoint {path} does not exist (ComfyUI name: {SINGLE_FILE_NAMES[role]})"
                )
            if path.suffix.lower() == ".safetensors":
                expect_role(path, read_checkpoint_keys(path), role)
        if self.tokenizer is not None and not Path(self.tokenizer).expanduser().is_dir():
            raise MissingComponentError(
                f"tokenizer folder {self.tokenizer} does not exist; leave it None for the bundled one"
            )

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> SingleFileWeights:
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"unknown single-file weights keys {unknown}; known: {sorted(known)}")
        return cls(**mapping)

    @classmethod
    def from_folder(cls, folder: str | Path, allow_pickle: bool = False) -> SingleFileWeights:
        """Find the three files in a folder (or a ComfyUI models/ folder): by name, else by content."""
        folder = Path(folder).expanduser()
        candidates = _candidate_files(folder, allow_pickle)
        found = {role: _find_role(folder, role, candidates, allow_pickle) for role in SINGLE_FILE_NAMES}
        tokenizer = folder / "tokenizer"
        return cls(**{role: str(path) for role, path in found.items()},
                   tokenizer=str(tokenizer) if (tokenizer / "tokenizer_config.json").is_file() else None)


def _candidate_files(folder: Path, allow_pickle: bool) -> list[Path]:
    suffixes = (".safetensors", *PICKLE_SUFFIXES) if allow_pickle else (".safetensors",)
    places = [folder, *(folder / sub for sub in COMFY_SUBFOLDERS if (folder / sub).is_dir())]
    return sorted(path for place in places for path in place.iterdir() if path.suffix.lower() in suffixes)


def _find_role(folder: Path, role: str, candidates: list[Path], allow_pickle: bool) -> Path:
    """The standard ComfyUI name wins; otherwise the one file whose keys say it is this component."""
    named = [path for path in candidates if path.name == SINGLE_FILE_NAMES[role]]
    if named:
        return named[0]
    matching = [path for path in candidates if identify_checkpoint(read_checkpoint_keys(path, allow_pickle))[1] == role]
    if len(matching) == 1:
        return matching[0]
    if len(matching) > 1:
        raise ValueError(
            f"{folder} holds several {ROLE_TITLES[role]} checkpoints ({', '.join(p.name for p in matching)}); "
            f"name the one to use with SingleFileWeights({role}=...)"
        )
    pickles = [] if allow_pickle else sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    hint = f"; pickle files {pickles} were not considered (allow_pickle=True reads them)" if pickles else ""
    raise MissingComponentError(
        f"no {ROLE_TITLES[role]} checkpoint in {folder}: looked for {SINGLE_FILE_NAMES[role]} and for any "
        f".safetensors holding one, among {[p.name for p in candidates] or 'no files'}{hint}. "
        f"A diffusers-format folder needs transformer/, vae/ and text_encoder/ subfolders instead."
    )


# ----- identifying -------------------------------------------------------------------

# (kind, role or None for foreign models, description, key suffixes that must all occur)
_SIGNATURES: list[tuple[str, str | None, str, tuple[str, ...]]] = [
    ("zimage_original", "transformer", "a Z-Image transformer (original key names)",
     ("layers.0.attention.qkv.weight", "cap_embedder.1.weight", "context_refiner.0.attention_norm1.weight")),
    ("zimage_diffusers", "transformer", "a Z-Image transformer (diffusers key names)",
     ("all_x_embedder.2-1.weight", "context_refiner.0.attention_norm1.weight")),
    ("qwen3", "text_encoder", "a Qwen3 language model", ("embed_tokens.weight", "layers.0.self_attn.q_norm.weight")),
    ("vae_original", "vae", "a VAE in original LDM/BFL key names", ("encoder.down.0.block.0.conv1.weight",)),
    ("vae_diffusers", "vae", "a VAE in diffusers key names", ("encoder.down_blocks.0.resnets.0.conv1.weight",)),
    ("flux_transformer", None, "a FLUX transformer", ("double_blocks.0.img_attn.qkv.weight",)),
    ("mmdit_diffusers", None, "an MMDiT transformer (FLUX/SD3/Qwen-Image, diffusers names)",
     ("transformer_blocks.0.attn.add_q_proj.weight",)),
    ("sd3_transformer", None, "a Stable Diffusion 3 transformer", ("joint_blocks.0.x_block.attn.qkv.weight",)),
    ("sd_unet", None, "a Stable Diffusion UNet", ("input_blocks.0.0.weight",)),
    ("sd_unet", None, "a Stable Diffusion UNet (diffusers)",
     ("down_blocks.0.resnets.0.conv1.weight", "time_embedding.linear_1.weight")),
    ("lumina_like", None, "a Lumina-style DiT without Z-Image's context refiner",
     ("cap_embedder.1.weight", "layers.0.attention.qkv.weight")),
    ("clip", None, "a CLIP text encoder", ("text_model.encoder.layers.0.self_attn.q_proj.weight",)),
    ("t5", None, "a T5 encoder", ("encoder.block.0.layer.0.SelfAttention.q.weight",)),
    ("other_llm", None, "a language model other than Qwen3 (no q_norm/k_norm)",
     ("embed_tokens.weight", "layers.0.self_attn.q_proj.weight")),
]


def identify_checkpoint(keys: Iterable[str]) -> tuple[str, str | None, str]:
    """(kind, role, description) of a checkpoint, judged by its key names alone."""
    keys = list(keys)
    for kind, role, description, markers in _SIGNATURES:
        if all(any(key.endswith(marker) for key in keys) for marker in markers):
            return kind, role, description
    return "unknown", None, "an unrecognized checkpoint"


def expect_role(path: Path, keys: list[str], role: str) -> str:
    """The checkpoint kind, or a WrongModelError naming what the file actually holds."""
    kind, found_role, description = identify_checkpoint(keys)
    if found_role == role:
        return kind
    examples = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
    raise WrongModelError(
        f"{path} holds {description} (keys like {examples}), not a {ROLE_TITLES[role]}. "
        f"Give the {ROLE_TITLES[role]} checkpoint here (ComfyUI name: {SINGLE_FILE_NAMES[role]})."
    )


# ----- key conversion ------------------------------------------------------------------


def strip_prefix(state_dict: StateDict, marker: str, keep: tuple[str, ...] = ()) -> StateDict:
    """Drop whatever prefix sits before `marker` (``model.``, ``vae.``, ...) from every key.

    Keys outside the prefix are dropped unless they start with one of `keep`.
    """
    prefix = next(key[: -len(marker)] for key in state_dict if key.endswith(marker))
    return {
        key[len(prefix):] if key.startswith(prefix) else key: value
        for key, value in state_dict.items()
        if key.startswith(prefix) or key.startswith(keep)
    }


def text_encoder_to_hf(state_dict: StateDict) -> StateDict:
    """Qwen3Model key names: no ``model.`` prefix, no ``lm_head`` (the encoder never uses it)."""
    stripped = strip_prefix(state_dict, "embed_tokens.weight", keep=("lm_head.",))
    return {key: value for key, value in stripped.items() if not key.startswith("lm_head.")}


def text_encoder_to_comfy(state_dict: StateDict) -> StateDict:
    return {f"model.{key}": value for key, value in state_dict.items()}


def transformer_to_diffusers(state_dict: StateDict, kind: str) -> StateDict:
    """diffusers' own converter for original keys; diffusers-named files only lose a prefix."""
    stripped = strip_prefix(state_dict, "cap_embedder.1.weight")  # also drops a bundled VAE/encoder
    if kind == "zimage_diffusers":
        return stripped
    # diffusers renames by substring: an `all_x_embedder.2-1.` key would become `all_all_x_embedder.2-1.2-1.`
    unrenamed = {re.sub(r"^all_(x_embedder|final_layer)\.2-1\.", r"\1.", key): value for key, value in stripped.items()}
    return convert_z_image_transformer_checkpoint_to_diffusers(unrenamed)


_TRANSFORMER_RENAMES = [
    ("all_final_layer.2-1.", "final_layer."),
    ("all_x_embedder.2-1.", "x_embedder."),
    (".attention.to_out.0.", ".attention.out."),
    (".attention.norm_q.", ".attention.q_norm."),
    (".attention.norm_k.", ".attention.k_norm."),
]


def transformer_to_original(state_dict: StateDict) -> StateDict:
    """Inverse of diffusers' converter: fuse q/k/v into ``qkv`` and restore the original names."""
    converted: StateDict = {}
    for key, value in state_dict.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q." in key:
            parts = [state_dict[key.replace("to_q", name)] for name in ("to_q", "to_k", "to_v")]
            key, value = key.replace(".to_q.", ".qkv."), torch.cat(parts, dim=0)
        for old, new in _TRANSFORMER_RENAMES:
            key = key.replace(old, new)
        converted[key] = value
    return converted


def vae_to_diffusers(state_dict: StateDict, kind: str) -> StateDict:
    """diffusers' LDM converter, told how many resolution levels the file has."""
    if kind == "vae_diffusers":
        return strip_prefix(state_dict, "encoder.conv_in.weight")
    stripped = strip_prefix(state_dict, "encoder.conv_in.weight")
    levels = _count_indices(stripped, r"encoder\.down\.(\d+)\.")
    layout = {"down_block_types": [None] * levels, "up_block_types": [None] * levels}
    converted = convert_ldm_vae_checkpoint(stripped, layout)
    return {key: value for key, value in converted.items() if value is not None}


def vae_to_original(state_dict: StateDict) -> StateDict:
    """Inverse of diffusers' LDM VAE converter (BFL ``ae.safetensors`` key names)."""
    levels = _count_indices(state_dict, r"decoder\.up_blocks\.(\d+)\.")
    converted = {}
    for key, value in state_dict.items():
        new_key = _vae_key_to_original(key, levels)
        if ".mid.attn_1." in new_key and new_key.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # BFL's attention projections are 1x1 convolutions
        converted[new_key] = value
    return converted


def _vae_key_to_original(key: str, levels: int) -> str:
    def flip(match: re.Match[str]) -> str:
        return str(levels - 1 - int(match[1]))  # diffusers counts up blocks from the bottom, BFL from the top

    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    key = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", key)
    key = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", key)
    key = re.sub(r"up_blocks\.(\d+)\.resnets\.", lambda m: f"up.{flip(m)}.block.", key)
    key = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"up.{flip(m)}.upsample.", key)
    key = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", key)
    key = key.replace("mid_block.attentions.0.", "mid.attn_1.")
    for old, new in ((".group_norm.", ".norm."), (".to_q.", ".q."), (".to_k.", ".k."),
                     (".to_v.", ".v."), (".to_out.0.", ".proj_out.")):
        key = key.replace(old, new)
    return key


def _count_indices(state_dict: Mapping[str, Any], pattern: str) -> int:
    indices = {int(match[1]) for key in state_dict if (match := re.search(pattern, key))}
    return max(indices) + 1 if indices else 0


# ----- config inference ----------------------------------------------------------------


def infer_transformer_config(state_dict: StateDict) -> dict[str, Any]:
    """Config fields fixed by tensor shapes (diffusers key names)."""
    dim, cap_feat_dim = state_dict["cap_embedder.1.weight"].shape
    config: dict[str, Any] = dict(
        dim=dim, cap_feat_dim=cap_feat_dim,
        n_layers=_count_indices(state_dict, r"^layers\.(\d+)\."),
        n_refiner_layers=_count_indices(state_dict, r"^context_refiner\.(\d+)\."),
        qk_norm="layers.0.attention.norm_q.weight" in state_dict,
        in_channels=state_dict["all_x_embedder.2-1.weight"].shape[1] // 4,  # patch 2x2, 1 frame
    )
    if config["qk_norm"]:
        head_dim = state_dict["layers.0.attention.norm_q.weight"].shape[0]
        kv_width = state_dict["layers.0.attention.to_k.weight"].shape[0]
        config.update(n_heads=dim // head_dim, n_kv_heads=kv_width // head_dim)
        config["axes_dims"] = _scaled_axes(head_dim)
    return config


def _scaled_axes(head_dim: int) -> list[int]:
    """RoPE axes are not stored in the weights: Turbo's split, scaled to the head size.

    Exact for Turbo (128 -> [32, 48, 48]); for other sizes a guess that a
    `transformer_config={"axes_dims": [...]}` override replaces.
    """
    base = ZIMAGE_TURBO_TRANSFORMER_CONFIG["axes_dims"]
    scaled = [axis * head_dim // sum(base) for axis in base]
    scaled[0] += head_dim - sum(scaled)
    return scaled


def infer_text_encoder_config(state_dict: StateDict) -> dict[str, Any]:
    """Qwen3 config fields fixed by tensor shapes (Qwen3Model key names)."""
    vocab_size, hidden_size = state_dict["embed_tokens.weight"].shape
    head_dim = state_dict["layers.0.self_attn.q_norm.weight"].shape[0]
    return dict(
        vocab_size=vocab_size, hidden_size=hidden_size, head_dim=head_dim,
        num_hidden_layers=_count_indices(state_dict, r"^layers\.(\d+)\."),
        num_attention_heads=state_dict["layers.0.self_attn.q_proj.weight"].shape[0] // head_dim,
        num_key_value_heads=state_dict["layers.0.self_attn.k_proj.weight"].shape[0] // head_dim,
        intermediate_size=state_dict["layers.0.mlp.gate_proj.weight"].shape[0],
        attention_bias="layers.0.self_attn.q_proj.bias" in state_dict,
    )


def infer_vae_config(state_dict: StateDict) -> dict[str, Any]:
    """AutoencoderKL config fields fixed by tensor shapes (diffusers key names)."""
    levels = _count_indices(state_dict, r"^encoder\.down_blocks\.(\d+)\.")
    widths = [state_dict[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(levels)]
    return dict(
        in_channels=state_dict["encoder.conv_in.weight"].shape[1],
        out_channels=state_dict["decoder.conv_out.weight"].shape[0],
        latent_channels=state_dict["decoder.conv_in.weight"].shape[1],
        block_out_channels=widths,
        layers_per_block=_count_indices(state_dict, r"^encoder\.down_blocks\.0\.resnets\.(\d+)\."),
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        mid_block_add_attention="encoder.mid_block.attentions.0.to_q.weight" in state_dict,
        use_quant_conv="quant_conv.weight" in state_dict,
        use_post_quant_conv="post_quant_conv.weight" in state_dict,
    )


def merge_configs(path: Path, role: str, base: Mapping[str, Any], infer: Callable[[StateDict], dict[str, Any]],
                  state_dict: StateDict, override: Mapping[str, Any] | None) -> dict[str, Any]:
    """Real defaults < shapes in the file < config stored in the file < the user's override."""
    try:
        inferred = infer(state_dict)
    except KeyError as error:
        raise ShapeMismatchError(
            f"{path}: tensor {error.args[0]!r}, which fixes the {ROLE_TITLES[role]}'s size, is missing; "
            f"the file is truncated or holds a different variant of the model"
        ) from error
    return {**base, **inferred, **read_stored_config(path), **(override or {})}


def check_vae_groups(path: Path, config: Mapping[str, Any]) -> None:
    """GroupNorm's group count is not in the weights; a wrong default would crash deep in torch."""
    groups = config["norm_num_groups"]
    bad = [channels for channels in config["block_out_channels"] if channels % groups]
    if bad:
        raise ShapeMismatchError(
            f"{path}: VAE norm_num_groups={groups} does not divide the channel counts {bad} found in the file. "
            f"The group count is not stored in the weights; pass vae_config={{'norm_num_groups': N}} with the value "
            f"the VAE was trained with."
        )


# ----- building ------------------------------------------------------------------------


def build_from_state_dict(factory: Callable[[], torch.nn.Module], state_dict: StateDict,
                          path: Path, role: str) -> torch.nn.Module:
    """Build the module with empty parameters and adopt the checkpoint's tensors.

    Nothing is initialized and nothing is copied: a 6B DiT costs one copy of its
    weights, not three. Buffers (e.g. RoPE tables) are still computed normally.
    """
    with parameters_on_meta():
        module = factory()
    check_state_dict(module, state_dict, path, role)
    module.load_state_dict(state_dict, strict=True, assign=True)
    return module.eval().requires_grad_(False)


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Register every new parameter on the meta device (accelerate's `init_empty_weights`, in small)."""
    original = torch.nn.Module.register_parameter

    def register_on_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


def check_state_dict(module: torch.nn.Module, state_dict: StateDict, path: Path, role: str) -> None:
    """Name the first tensors whose shape or presence disagrees with the config."""
    expected = module.state_dict()
    mismatched = [(key, tuple(state_dict[key].shape), tuple(value.shape)) for key, value in expected.items()
                  if key in state_dict and state_dict[key].shape != value.shape]
    if mismatched:
        key, found, wanted = mismatched[0]
        more = f" (and {len(mismatched) - 1} more tensors)" if len(mismatched) > 1 else ""
        raise ShapeMismatchError(
            f"{path}: tensor {key!r} has shape {found} in the checkpoint but the {ROLE_TITLES[role]} config "
            f"expects {wanted}{more}. The config override or the stored config does not match this file; "
            f"remove the override, or give the checkpoint the config was written for."
        )
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        raise ShapeMismatchError(_key_mismatch_message(path, role, missing, unexpected))


def _key_mismatch_message(path: Path, role: str, missing: list[str], unexpected: list[str]) -> str:
    parts = [f"{path} does not fit the {ROLE_TITLES[role]} config:"]
    if missing:
        parts.append(f"{len(missing)} tensors missing (e.g. {', '.join(missing[:3])});")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])});")
    if any("scale_weight" in key or "scaled_fp8" in key for key in unexpected):
        parts.append("this is a scaled-fp8 checkpoint, which is not supported: use the bf16 file.")
    else:
        parts.append("the file is truncated, or from a different variant of the model.")
    return " ".join(parts)


def build_transformer(path: Path, state_dict: StateDict,
                      override: Mapping[str, Any] | None) -> ZImageTransformer2DModel:
    config = merge_configs(path, "transformer", ZIMAGE_TURBO_TRANSFORMER_CONFIG, infer_transformer_config,
                           state_dict, override)
    return build_from_state_dict(lambda: ZImageTransformer2DModel.from_config(config), state_dict, path, "transformer")


def build_text_encoder(path: Path, state_dict: StateDict, override: Mapping[str, Any] | None) -> Qwen3Model:
    config = merge_configs(path, "text_encoder", QWEN3_4B_CONFIG, infer_text_encoder_config, state_dict, override)
    return build_from_state_dict(lambda: Qwen3Model(Qwen3Config(**config)), state_dict, path, "text_encoder")


def build_vae(path: Path, state_dict: StateDict, override: Mapping[str, Any] | None) -> AutoencoderKL:
    config = merge_configs(path, "vae", FLUX_VAE_CONFIG, infer_vae_config, state_dict, override)
    check_vae_groups(path, config)
    return build_from_state_dict(lambda: AutoencoderKL.from_config(config), state_dict, path, "vae")


_TO_DIFFUSERS: dict[str, Callable[[StateDict, str], StateDict]] = {
    "transformer": transformer_to_diffusers,
    "text_encoder": lambda state_dict, kind: text_encoder_to_hf(state_dict),
    "vae": vae_to_diffusers,
}
_BUILDERS = {"transformer": build_transformer, "text_encoder": build_text_encoder, "vae": build_vae}
_DEFAULTS = {"transformer": ZIMAGE_TURBO_TRANSFORMER_CONFIG, "text_encoder": QWEN3_4B_CONFIG, "vae": FLUX_VAE_CONFIG}
_INFER = {"transformer": infer_transformer_config, "text_encoder": infer_text_encoder_config, "vae": infer_vae_config}


def config_from_header(path: str | Path, role: str, override: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The config `load_single_file` would build `role` with, read from the safetensors header alone
    (shapes on the meta device: no tensor is read), so checks run before loading. None for pickle
    files, whose shapes only loading tells."""
    path = Path(path).expanduser()
    if path.suffix.lower() != ".safetensors":
        return None
    header = read_safetensors_header(path)
    shapes = {key: torch.empty(entry["shape"], device="meta") for key, entry in header.items() if key != "__metadata__"}
    kind = expect_role(path, list(shapes), role)
    config = merge_configs(path, role, _DEFAULTS[role], _INFER[role], _TO_DIFFUSERS[role](shapes, kind), override)
    if role == "vae":
        check_vae_groups(path, config)
    return config


def load_single_file(path: str | Path, role: str, dtype: torch.dtype | None = None,
                     config: Mapping[str, Any] | None = None, allow_pickle: bool = False) -> torch.nn.Module:
    """One component from one checkpoint file: check it is the right model, convert, build."""
    path = Path(path).expanduser()
    refuse_pickle(path, allow_pickle)
    if not path.is_file():
        raise MissingComponentError(
            f"{ROLE_TITLES[role]} checkpoint {path} does not exist (ComfyUI name: {SINGLE_FILE_NAMES[role]})"
        )
    kind = expect_role(path, read_checkpoint_keys(path, allow_pickle), role)
    state_dict = _TO_DIFFUSERS[role](read_checkpoint(path, dtype, allow_pickle), kind)
    return _BUILDERS[role](path, state_dict, config)


# ----- writing -------------------------------------------------------------------------


def export_single_files(components: ZImageComponents, folder: str | Path,
                        dtype: torch.dtype | None = None) -> dict[str, Path]:
    """Write the three ComfyUI-style files (original key names), config stored in each header.

    Useful to hand a model to ComfyUI (`dtype=torch.bfloat16` writes what ComfyUI
    ships), and for the tests: what this writes, `load_components` reads back
    bit-identically. Returns {component: path}.
    """
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    transformer, encoder, vae = components.transformer, components.text_encoder, components.vae
    parts = {
        "transformer": (transformer_to_original(transformer.state_dict()), _diffusers_config(transformer)),
        "text_encoder": (text_encoder_to_comfy(encoder.state_dict()), _qwen3_config(encoder)),
        "vae": (vae_to_original(vae.state_dict()), _diffusers_config(vae)),
    }
    paths = {}
    for role, (state_dict, config) in parts.items():
        paths[role] = folder / SINGLE_FILE_NAMES[role]
        metadata = {CONFIG_METADATA_KEY: json.dumps(config), ROLE_METADATA_KEY: role, "format": "pt"}
        save_file({key: _savable(value, dtype) for key, value in state_dict.items()}, str(paths[role]), metadata)
    return paths


def _savable(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Own, contiguous CPU storage: safetensors refuses views that share memory."""
    tensor = _cast(tensor.detach().to("cpu"), dtype).contiguous()
    whole = tensor.storage_offset() == 0 and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    return tensor if whole else tensor.clone()


def _diffusers_config(module: Any) -> dict[str, Any]:
    return {key: value for key, value in dict(module.config).items() if not key.startswith("_")}


def _qwen3_config(module: Qwen3Model) -> dict[str, Any]:
    config = module.config
    stored = {key: getattr(config, key) for key in QWEN3_4B_CONFIG if key != "rope_theta"}
    stored["rope_theta"] = config.rope_parameters["rope_theta"]
    return stored
