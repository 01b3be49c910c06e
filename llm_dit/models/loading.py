"""Turn a `weights` spec into ZImageComponents.

A spec is one of: 'tiny' (the embedded preset); a diffusers-format folder
(text_encoder/, tokenizer/, transformer/, vae/, scheduler/) or a hub id such as
Tongyi-MAI/Z-Image-Turbo; a folder of ComfyUI-style single files
(z_image_turbo_bf16.safetensors, qwen_3_4b.safetensors, ae.safetensors, also found
in ComfyUI's models/diffusion_models, text_encoders, vae); or `SingleFileWeights`
(or a dict of its fields) naming the three files. Only safetensors are read unless
the caller passes `allow_pickle=True`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from llm_dit.models.components import ZImageComponents
from llm_dit.models.config import (
    EMBEDDED_ROOT,
    RANDOM_Z_IMAGE_TURBO,
    TINY,
    TINY_RANDOM,
    ZImageConfig,
    embedded_model_folder,
    looks_like_diffusers,
)
from llm_dit.models.placement import Placement, apply_placement, out_of_memory_advice, resolve_dtype
from llm_dit.models.single_file import (
    PICKLE_SUFFIXES,
    ROLE_TITLES,
    SINGLE_FILE_NAMES,
    MissingComponentError,
    PickleCheckpointError,
    ShapeMismatchError,
    SingleFileWeights,
    read_safetensors_header,
    expect_role,
    identify_checkpoint,
    load_single_file,
    parameters_on_meta,
    read_checkpoint_keys,
    refuse_pickle,
)
from llm_dit.models.random_full import build_random_components
from llm_dit.models.tiny import ZIMAGE_SCHEDULER_CONFIG, build_tiny_components, load_bundled_tokenizer

log = logging.getLogger(__name__)

# The preset names (llm_dit.models.config owns them and their shapes).
TINY_PRESET, TINY_RANDOM_PRESET, RANDOM_PRESET = TINY, TINY_RANDOM, RANDOM_Z_IMAGE_TURBO
DIFFUSERS_SUBFOLDERS = ("transformer", "vae", "text_encoder")


WeightsSpec = str | os.PathLike | SingleFileWeights | Mapping[str, Any]


# ----- which kind of spec ------------------------------------------------------------


@dataclass
class ResolvedWeights:
    kind: str  # "tiny" | "random" | "diffusers" | "hub" | "single_files"
    location: str | SingleFileWeights


def resolve_weights(weights: WeightsSpec, allow_pickle: bool = False) -> ResolvedWeights:
    """Decide what `weights` names, checking that it exists, without loading any tensor."""
    if isinstance(weights, SingleFileWeights) or isinstance(weights, Mapping):
        spec = weights if isinstance(weights, SingleFileWeights) else SingleFileWeights.from_mapping(weights)
        spec.check(allow_pickle)
        return ResolvedWeights("single_files", spec)
    text = os.fspath(weights)
    if text in (TINY_PRESET, TINY_RANDOM_PRESET):
        return ResolvedWeights("tiny", text)
    if text == RANDOM_PRESET:
        return ResolvedWeights("random", text)
    path = Path(text).expanduser()
    if path.is_file():
        raise ValueError(
            f"{path} is a single checkpoint file, which holds one component; give the folder holding "
            f"all three ({', '.join(SINGLE_FILE_NAMES.values())}) or SingleFileWeights(transformer=..., "
            f"text_encoder=..., vae=...)"
        )
    if path.is_dir():
        if looks_like_diffusers(path):
            _check_diffusers_folder(path, allow_pickle)
            return ResolvedWeights("diffusers", str(path))
        spec = SingleFileWeights.from_folder(path, allow_pickle)
        spec.check(allow_pickle)
        return ResolvedWeights("single_files", spec)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return ResolvedWeights("hub", text)
    raise FileNotFoundError(
        f"weights folder {text!r} does not exist; give a diffusers-format Z-Image folder, a folder of "
        f"single-file checkpoints, a hub id such as Tongyi-MAI/Z-Image-Turbo, or 'tiny'"
    )


def check_weights_source(weights: WeightsSpec, allow_pickle: bool = False,
                         text_encoder_override: str | None = None) -> ZImageConfig | None:
    """Fail fast (before anything loads) when `weights` cannot name a model, or names parts whose
    shapes cannot work together (with the encoder override swapped in). Returns the model's
    config, None for a hub id."""
    resolve_weights(weights, allow_pickle)
    config = ZImageConfig.from_weights(weights, text_encoder_override, allow_pickle)
    if config is not None:
        config.check()
    return config


def transformer_config(weights: WeightsSpec) -> dict[str, Any] | None:
    """The transformer's config without loading it (for checks before the model loads), or None when
    only loading would tell (a hub id, a pickle checkpoint)."""
    try:
        config = ZImageConfig.from_weights(weights)
    except (ValueError, FileNotFoundError):
        return None
    return None if config is None or config.transformer is None else dict(config.transformer)


def _check_diffusers_folder(path: Path, allow_pickle: bool) -> None:
    """Each required subfolder exists, has a config and safetensors weights (or allowed pickles)."""
    missing = [sub for sub in DIFFUSERS_SUBFOLDERS if not (path / sub).is_dir()]
    if missing:
        raise MissingComponentError(
            f"{path} is not a diffusers-format Z-Image folder: missing {', '.join(sub + '/' for sub in missing)}"
        )
    for sub in DIFFUSERS_SUBFOLDERS:
        folder = path / sub
        if not (folder / "config.json").is_file():
            raise MissingComponentError(f"{folder}/config.json is missing: the {sub} cannot be built without it")
        safetensors = list(folder.glob("*.safetensors"))
        pickles = [p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
        if not safetensors and not pickles:
            raise MissingComponentError(f"{folder} has no weights (*.safetensors): the download is incomplete")
        if not safetensors and not allow_pickle:
            raise PickleCheckpointError(
                f"{folder} only has pickle weights ({', '.join(p.name for p in pickles)}); loading them can run "
                f"arbitrary code. Convert them to .safetensors, or pass allow_pickle=True if you trust the source."
            )
        for file in safetensors:  # a truncated download is named here, before anything loads
            read_safetensors_header(file)


# ----- loading -----------------------------------------------------------------------


def load_components(
    weights: WeightsSpec = TINY_PRESET,
    dtype: torch.dtype | str = torch.float32,
    seed: int = 0,
    *,
    placement: Placement | None = None,
    text_encoder_override: str | None = None,
    allow_pickle: bool = False,
) -> ZImageComponents:
    """Load every component; `seed` only matters for the tiny preset.

    `dtype` is the load precision of components whose `placement` dtype is None;
    loading straight into the final dtype avoids a float32 copy of a 6B model.
    `text_encoder_override` swaps in another encoder of the same hidden size (a
    folder such as Qwen3-Embedding-4B, or a single file).
    """
    resolved = resolve_weights(weights, allow_pickle)
    config = ZImageConfig.from_weights(weights, text_encoder_override, allow_pickle)
    if config is not None:
        config.check()  # shapes that cannot work together fail here, before any tensor loads
    dtypes = _component_dtypes(resolve_dtype(dtype), placement)
    components = _load_resolved(resolved, dtypes, seed, allow_pickle)
    if text_encoder_override is not None:
        components.text_encoder = load_text_encoder(text_encoder_override, dtypes["text_encoder"], allow_pickle)
        components.source += f" + text_encoder={text_encoder_override}"
    validate_components(components, text_encoder_override)
    if placement is not None:
        apply_placement(components, placement)
    return components


def _component_dtypes(dtype: torch.dtype | None, placement: Placement | None) -> dict[str, torch.dtype]:
    default = dtype or torch.float32
    if placement is None:
        return {role: default for role in SINGLE_FILE_NAMES}
    return {role: placement.dtype_for(role) or default for role in SINGLE_FILE_NAMES}


def _load_resolved(resolved: ResolvedWeights, dtypes: dict[str, torch.dtype], seed: int,
                   allow_pickle: bool) -> ZImageComponents:
    if resolved.kind == "random":  # full-size, random weights, built on the GPU if there is one
        return build_random_components(seed=seed, dtype=dtypes["transformer"])
    if resolved.kind == "tiny":
        trained = embedded_model_folder(TINY) if resolved.location == TINY else None
        if trained is not None:  # the trained embedded model shipped in the package (issue 18)
            components = load_diffusers_folder(os.fspath(trained), dtypes=dtypes)
            components.source = f"{TINY} (trained, {trained})"
            return components
        components = build_tiny_components(seed=seed)
        for role, module in components.modules().items():
            module.to(dtypes[role])
        return components
    if resolved.kind == "single_files":
        return load_single_files(resolved.location, dtypes, allow_pickle)
    return load_diffusers_folder(resolved.location, dtypes=dtypes, allow_pickle=allow_pickle)


def load_single_files(spec: SingleFileWeights, dtypes: dict[str, torch.dtype] | torch.dtype = torch.bfloat16,
                      allow_pickle: bool = False) -> ZImageComponents:
    """Build the three models from ComfyUI-style files; tokenizer and scheduler from defaults."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import AutoTokenizer

    spec.check(allow_pickle)
    dtypes = dtypes if isinstance(dtypes, dict) else {role: dtypes for role in SINGLE_FILE_NAMES}
    modules = {}
    for role, path in spec.files().items():
        with out_of_memory_advice(f"loading the {role} from {path}"):
            modules[role] = load_single_file(path, role, dtypes[role], spec.configs()[role], allow_pickle)
    tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer) if spec.tokenizer else load_bundled_tokenizer()
    source = ", ".join(f"{role}={path}" for role, path in spec.files().items())
    return ZImageComponents(
        text_encoder=modules["text_encoder"], tokenizer=tokenizer, transformer=modules["transformer"],
        vae=modules["vae"], scheduler=FlowMatchEulerDiscreteScheduler(**ZIMAGE_SCHEDULER_CONFIG),
        source=f"single files: {source}",
    )


def load_diffusers_folder(path_or_hub_id: str, dtype: torch.dtype = torch.bfloat16, *,
                          dtypes: dict[str, torch.dtype] | None = None, allow_pickle: bool = False) -> ZImageComponents:
    """A diffusers-format folder (text_encoder/, tokenizer/, transformer/, vae/, scheduler/) or hub id."""
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Model

    local = Path(path_or_hub_id).expanduser()
    source = str(local) if local.exists() else path_or_hub_id
    if local.exists():
        _check_diffusers_folder(local, allow_pickle)
    dtypes = dtypes or {role: dtype for role in SINGLE_FILE_NAMES}
    classes = {"text_encoder": Qwen3Model, "transformer": ZImageTransformer2DModel, "vae": AutoencoderKL}
    models = {role: _from_pretrained(cls, source, role, dtypes[role], allow_pickle) for role, cls in classes.items()}
    components = ZImageComponents(
        **models,
        tokenizer=_load_tokenizer(source, local.exists()),
        scheduler=_load_scheduler(source, local.exists()),
        source=source,
    )
    for module in components.modules().values():
        module.eval().requires_grad_(False)
    return components


def _from_pretrained(cls: Any, source: str, subfolder: str, dtype: torch.dtype, allow_pickle: bool) -> Any:
    """from_pretrained with errors that name the folder, the tensor, and what to do."""
    # transformers 5 calls it `dtype`, diffusers `torch_dtype`.
    dtype_key = "dtype" if cls.__module__.startswith("transformers") else "torch_dtype"
    with out_of_memory_advice(f"loading the {subfolder} from {source}"):
        try:
            return cls.from_pretrained(source, subfolder=subfolder, use_safetensors=None if allow_pickle else True,
                                       **{dtype_key: dtype})
        except (RuntimeError, ValueError) as error:
            if not any(word in str(error) for word in ("size mismatch", "shape", "mismatched_sizes")):
                raise
            raise ShapeMismatchError(_explain_mismatch(cls, Path(source) / subfolder, error)) from error
        except OSError as error:
            raise MissingComponentError(
                f"could not load the {subfolder} of {source}: {error}. A hub id needs network access; "
                f"offline, give a local diffusers-format folder or single files."
            ) from error


def _explain_mismatch(cls: Any, folder: Path, error: Exception) -> str:
    """Name the first tensor whose shape disagrees with config.json (transformers only says 'see the log')."""
    if not folder.is_dir():
        return f"{folder}: weights do not match config.json: {error}"
    from transformers import AutoConfig

    with parameters_on_meta():
        is_diffusers = hasattr(cls, "load_config")
        model = cls.from_config(cls.load_config(folder)) if is_diffusers else cls(AutoConfig.from_pretrained(folder))
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                name = key if key in expected else key.removeprefix("model.")
                found = tuple(handle.get_slice(key).get_shape())
                if name in expected and expected[name] != found:
                    return (f"{file}: tensor {key!r} has shape {found} but {folder.name}/config.json expects "
                            f"{expected[name]}; the config and the weights come from different models")
    return f"{folder}: weights do not match config.json: {error}"


def _load_tokenizer(source: str, local: bool) -> Any:
    from transformers import AutoTokenizer

    if local and not (Path(source) / "tokenizer").is_dir():
        if not Path(source).resolve().is_relative_to(EMBEDDED_ROOT):  # the embedded model ships none on purpose
            log.warning("%s has no tokenizer/ folder; using the bundled Qwen3 tokenizer", source)
        return load_bundled_tokenizer()
    return AutoTokenizer.from_pretrained(source, subfolder="tokenizer")


def _load_scheduler(source: str, local: bool) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    if local and not (Path(source) / "scheduler").is_dir():
        log.warning("%s has no scheduler/ folder; using Z-Image-Turbo's scheduler config", source)
        return FlowMatchEulerDiscreteScheduler(**ZIMAGE_SCHEDULER_CONFIG)
    return FlowMatchEulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler")


def load_text_encoder(source: str, dtype: torch.dtype = torch.bfloat16, allow_pickle: bool = False) -> torch.nn.Module:
    """An encoder from a transformers folder / hub id (any AutoModel) or a Qwen3 single file."""
    from transformers import AutoModel

    path = Path(source).expanduser()
    if path.is_file():
        return load_single_file(path, "text_encoder", dtype, allow_pickle=allow_pickle)
    if path.is_dir() and not (path / "config.json").is_file():
        raise MissingComponentError(f"text encoder folder {path} has no config.json; give a transformers model folder")
    with out_of_memory_advice(f"loading the text encoder from {source}"):
        try:
            model = AutoModel.from_pretrained(str(path) if path.is_dir() else source, dtype=dtype,
                                              use_safetensors=None if allow_pickle else True)
        except OSError as error:
            raise MissingComponentError(
                f"could not load the text encoder {source}: {error}. Give a local transformers folder "
                f"(config.json + *.safetensors) or a Qwen3 single file; a hub id needs network access."
            ) from error
    return model.eval().requires_grad_(False)


def validate_components(components: ZImageComponents, text_encoder_source: str | None = None) -> None:
    """Cross-component checks: each part can feed the next."""
    hidden = components.text_encoder.config.hidden_size
    cap_feat_dim = components.transformer.config.cap_feat_dim
    if hidden != cap_feat_dim:
        which = f"text encoder {text_encoder_source}" if text_encoder_source else "text encoder"
        raise ShapeMismatchError(
            f"{which} has hidden size {hidden} but the transformer's caption embedder (cap_feat_dim) takes "
            f"{cap_feat_dim}-wide features; use an encoder with hidden_size {cap_feat_dim} "
            f"(for Z-Image-Turbo: Qwen3-4B or Qwen3-Embedding-4B)"
        )
    latent, in_channels = components.vae.config.latent_channels, components.transformer.config.in_channels
    if latent != in_channels:
        raise ShapeMismatchError(
            f"the VAE has {latent} latent channels but the transformer takes {in_channels}; "
            f"Z-Image needs the 16-channel FLUX VAE (ae.safetensors)"
        )
    rows = components.text_encoder.config.vocab_size
    if len(components.tokenizer) > rows:
        raise ShapeMismatchError(
            f"the tokenizer has {len(components.tokenizer)} tokens but the text encoder's embedding has only "
            f"{rows} rows; give the tokenizer that belongs to this encoder"
        )
