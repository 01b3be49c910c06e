"""ZImageConfig: the shapes of one Z-Image model, read without loading a tensor.

One object per model, whatever the source: a preset by name (`from_name`), a diffusers
folder or single-file checkpoints (`from_path`), any `weights` spec plus an encoder override
(`from_weights`). Checks that need only shapes run on it before anything loads (`check`):
the encoder's width against the caption embedder, the VAE's latent channels against the
transformer, hidden layers and surgery indices against the block counts.

    ZImageConfig.from_name("tiny-random").block_counts   # {'context_refiner': 2, 'noise_refiner': 2, 'layers': 2}
    ZImageConfig.from_weights("/models/Z-Image-Turbo", text_encoder_override="/models/Qwen3-Embedding-4B").check()

The presets' shapes live in `llm_dit.models.shapes`; the embedded trained model (`tiny`) is a
diffusers folder inside the package (`embedded_model_folder`), read like any other folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llm_dit.models.shapes import (
    FLUX_VAE_CONFIG, QWEN3_4B_CONFIG, TINY_TEXT_ENCODER_CONFIG, TINY_TRANSFORMER_CONFIG, TINY_VAE_CONFIG,
    ZIMAGE_SCHEDULER_CONFIG, ZIMAGE_TURBO_TRANSFORMER_CONFIG,
)
from llm_dit.models.single_file import ShapeMismatchError, SingleFileWeights, config_from_header

TINY = "tiny"
TINY_RANDOM = "tiny-random"
RANDOM_Z_IMAGE_TURBO = "random-z-image-turbo"
PRESETS = (TINY, TINY_RANDOM, RANDOM_Z_IMAGE_TURBO)
EMBEDDED_ROOT = Path(__file__).resolve().parent / "embedded"
ROLES = ("transformer", "text_encoder", "vae")


def embedded_model_folder(name: str = TINY) -> Path | None:
    """The diffusers folder of a trained model shipped inside the package
    (`llm_dit/models/embedded/<name>/`), or None while none is shipped."""
    folder = EMBEDDED_ROOT / name
    return folder if (folder / "transformer" / "config.json").is_file() else None


@dataclass(frozen=True)
class ZImageConfig:
    """Configs of the three models plus the scheduler; a component whose shape only loading
    can tell (a hub id, a pickle checkpoint) is None and its checks are skipped.

    Attributes:
        source: the preset name or the path the configs were read from.
        transformer: ZImageTransformer2DModel config (n_layers, n_refiner_layers, cap_feat_dim, ...).
        text_encoder: Qwen3 (or any transformers encoder) config (hidden_size, num_hidden_layers, ...).
        vae: AutoencoderKL config (latent_channels, ...).
        scheduler: FlowMatchEulerDiscreteScheduler config.
    """

    source: str
    transformer: dict[str, Any] | None
    text_encoder: dict[str, Any] | None
    vae: dict[str, Any] | None
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(ZIMAGE_SCHEDULER_CONFIG))

    # ----- sources -------------------------------------------------------------------

    @classmethod
    def from_name(cls, name: str) -> ZImageConfig:
        """A preset: "tiny" (the trained embedded model; its random twin until that ships),
        "tiny-random" (small random weights, for tests) or "random-z-image-turbo" (full size)."""
        if name == TINY and (folder := embedded_model_folder(TINY)) is not None:
            return replace(cls.from_path(folder), source=TINY)
        if name in (TINY, TINY_RANDOM):
            return cls(name, dict(TINY_TRANSFORMER_CONFIG), dict(TINY_TEXT_ENCODER_CONFIG), dict(TINY_VAE_CONFIG))
        if name == RANDOM_Z_IMAGE_TURBO:
            return cls(name, dict(ZIMAGE_TURBO_TRANSFORMER_CONFIG), dict(QWEN3_4B_CONFIG), dict(FLUX_VAE_CONFIG))
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")

    @classmethod
    def from_path(cls, path: str | os.PathLike | SingleFileWeights, allow_pickle: bool = False) -> ZImageConfig:
        """A diffusers folder (each component's config.json), a folder of single-file
        checkpoints, or `SingleFileWeights` (shapes from the safetensors headers; a pickle
        checkpoint's component stays None)."""
        if isinstance(path, SingleFileWeights):
            return cls._from_single_files(path)
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder; give a diffusers-format Z-Image folder or a folder "
                                    f"of single-file checkpoints")
        if looks_like_diffusers(folder):
            configs = [_read_json(folder / role / "config.json") for role in ROLES]
            scheduler = _read_json(folder / "scheduler" / "scheduler_config.json") or dict(ZIMAGE_SCHEDULER_CONFIG)
            return cls(str(folder), *configs, scheduler=scheduler)
        return cls._from_single_files(SingleFileWeights.from_folder(folder, allow_pickle))

    @classmethod
    def _from_single_files(cls, spec: SingleFileWeights) -> ZImageConfig:
        files, overrides = spec.files(), spec.configs()
        configs = [config_from_header(files[role], role, overrides[role]) for role in ROLES]
        return cls(f"single files in {files['transformer'].parent}", *configs)

    @classmethod
    def from_weights(cls, weights: Any, text_encoder_override: str | None = None,
                     allow_pickle: bool = False) -> ZImageConfig | None:
        """Any `weights` spec `load_components` takes, with the encoder override swapped in;
        None for a hub id (only downloading tells its shapes)."""
        if isinstance(weights, Mapping):
            weights = SingleFileWeights.from_mapping(weights)
        if isinstance(weights, SingleFileWeights):
            config = cls.from_path(weights, allow_pickle)
        elif os.fspath(weights) in PRESETS:
            config = cls.from_name(os.fspath(weights))
        elif Path(os.fspath(weights)).expanduser().is_dir():
            config = cls.from_path(weights, allow_pickle)
        else:
            return None  # a hub id
        return config.with_text_encoder(text_encoder_override) if text_encoder_override else config

    def with_text_encoder(self, source: str) -> ZImageConfig:
        """This model with another encoder (a transformers folder or a single file) swapped in."""
        path = Path(source).expanduser()
        if path.is_file():
            encoder = config_from_header(path, "text_encoder")
        elif (path / "config.json").is_file():
            encoder = _read_json(path / "config.json")
        else:
            encoder = None  # a hub id: known once it loads
        return replace(self, source=f"{self.source} + text_encoder={source}", text_encoder=encoder)

    # ----- what the checks read -------------------------------------------------------

    @property
    def hidden_states(self) -> int | None:
        """Hidden states the encoder returns (its layers + the embeddings), None when unknown."""
        layers = (self.text_encoder or {}).get("num_hidden_layers")
        return None if layers is None else int(layers) + 1

    @property
    def block_counts(self) -> dict[str, int] | None:
        """Blocks per surgery target, None when unknown."""
        if self.transformer is None:
            return None
        refiner = int(self.transformer.get("n_refiner_layers", 2))
        return {"context_refiner": refiner, "noise_refiner": refiner, "layers": int(self.transformer.get("n_layers", 30))}

    def check(self) -> None:
        """Each part can feed the next (the same checks `validate_components` runs after loading)."""
        transformer, encoder, vae = self.transformer or {}, self.text_encoder or {}, self.vae or {}
        hidden, width = encoder.get("hidden_size"), transformer.get("cap_feat_dim")
        if hidden is not None and width is not None and hidden != width:
            raise ShapeMismatchError(
                f"{self.source}: the text encoder has hidden size {hidden} but the transformer's caption embedder "
                f"(cap_feat_dim) takes {width}-wide features; use an encoder with hidden_size {width} "
                f"(for Z-Image-Turbo: Qwen3-4B or Qwen3-Embedding-4B)"
            )
        latent, channels = vae.get("latent_channels"), transformer.get("in_channels")
        if latent is not None and channels is not None and latent != channels:
            raise ShapeMismatchError(
                f"{self.source}: the VAE has {latent} latent channels but the transformer takes {channels}; "
                f"Z-Image needs the 16-channel FLUX VAE (ae.safetensors)"
            )


def looks_like_diffusers(path: Path) -> bool:
    """A diffusers-format folder. vae/ alone does not count: ComfyUI's models/ folder has one too."""
    markers = (path / "model_index.json").is_file(), (path / "transformer").is_dir(), (path / "text_encoder").is_dir()
    return any(markers)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, Mapping) else None
