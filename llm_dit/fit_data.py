"""ImageCaptionDataModule: a folder of captioned images for `fit`, cached as latents + caption features.

Training a refiner adapter needs, per image, only its VAE latent and its
caption's encoder features, both fixed. They are computed once, on first use,
with the model's own VAE and text encoder, and stored in one safetensors file
(under `<run>/cache/` or `cache_dir`) keyed by the images, captions, resolution,
encoding options and the encoder/VAE fingerprints; training then reads only
that file, so the text encoder (and, without validation sampling, the VAE) can
be freed from memory.

Captions come from a captions file (`captions.json` / `captions.csv` in the
folder, or `captions_file`), else from a sidecar `<image>.txt`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from llm_dit.encoding.options import EncodingOptions
from llm_dit.models.fingerprint import model_fingerprint
from llm_dit.run_folder import run_dir
from llm_dit.sampling.settings import LATENT_MULTIPLE
from llm_dit.training.synthetic_style import write_synthetic_style
from llm_dit.world_model.style_data import write_world_style_dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_FILES = ("captions.json", "captions.csv")
FILE_COLUMNS, CAPTION_COLUMNS = ("file", "image", "file_name", "filename"), ("caption", "text", "prompt")
# Fixed noise levels of the validation loss: one per example, cycled (deterministic curve).


@dataclass(frozen=True)
class Example:
    """One training image and its caption."""

    image: Path
    caption: str


# ----- discovery ----------------------------------------------------------------------


def find_examples(folder: str | Path, captions_file: str | Path | None = None) -> list[Example]:
    """Every image under `folder` (sorted) with its caption; clear errors for the usual mistakes."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ValueError(f"image folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    captions = read_captions_file(_captions_path(folder, captions_file))
    examples, missing = [], []
    for image in images:
        caption = _caption_for(image, folder, captions)
        if caption is None:
            missing.append(image.relative_to(folder).as_posix())
        else:
            examples.append(Example(image, caption))
    if missing:
        raise ValueError(
            f"{len(missing)} image(s) in {str(folder)!r} have no caption, e.g. {', '.join(missing[:3])}: add "
            f"{Path(missing[0]).with_suffix('.txt')} or an entry in captions.json / captions.csv"
        )
    return examples


def _captions_path(folder: Path, captions_file: str | Path | None) -> Path | None:
    if captions_file is not None:
        path = Path(captions_file).expanduser()
        path = path if path.is_absolute() or path.exists() else folder / path
        if not path.is_file():
            raise FileNotFoundError(f"captions file {str(captions_file)!r} does not exist")
        return path
    return next((folder / name for name in CAPTION_FILES if (folder / name).is_file()), None)


def read_captions_file(path: Path | None) -> dict[str, str]:
    """{image name or relative path: caption} from JSON ({name: caption} or [{file, caption}]) or CSV."""
    if path is None:
        return {}
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        rows = data.items() if isinstance(data, dict) else ((_pick(r, FILE_COLUMNS, path), _pick(r, CAPTION_COLUMNS, path)) for r in data)
    elif path.suffix.lower() == ".csv":
        with path.open(newline="") as handle:
            rows = [(_pick(r, FILE_COLUMNS, path), _pick(r, CAPTION_COLUMNS, path)) for r in csv.DictReader(handle)]
    else:
        raise ValueError(f"captions file {path} must be .json or .csv")
    return {str(name): str(caption) for name, caption in rows}


def _pick(row: dict[str, Any], names: tuple[str, ...], path: Path) -> Any:
    for name in names:
        if name in row:
            return row[name]
    raise ValueError(f"captions file {path}: each entry needs one of the keys {', '.join(names)}; got {sorted(row)}")


def _caption_for(image: Path, folder: Path, captions: dict[str, str]) -> str | None:
    relative = image.relative_to(folder).as_posix()
    caption = captions.get(relative, captions.get(image.name))
    if caption is None and image.with_suffix(".txt").is_file():
        caption = image.with_suffix(".txt").read_text()
    if caption is not None and not caption.strip():
        raise ValueError(f"the caption of {relative} is empty")
    return None if caption is None else caption.strip()


# ----- preprocessing ------------------------------------------------------------------


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """[3, R, R] in [-1, 1]: shorter side resized to R (bicubic), then center-cropped."""
    with Image.open(path) as image:
        fitted = ImageOps.fit(image.convert("RGB"), (resolution, resolution), method=Image.Resampling.BICUBIC)
    array = torch.frombuffer(bytearray(fitted.tobytes()), dtype=torch.uint8).view(resolution, resolution, 3)
    return array.permute(2, 0, 1).float() / 127.5 - 1.0


@torch.no_grad()
def encode_latents(vae: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """VAE latents in the DiT's space: (mean - shift_factor) * scaling_factor (inverse of decode_latents)."""
    parameter = next(vae.parameters())
    posterior = vae.encode(pixels.to(parameter.device, parameter.dtype)).latent_dist
    return ((posterior.mode() - vae.config.shift_factor) * vae.config.scaling_factor).float().cpu()


# ----- the cache ----------------------------------------------------------------------


class CachedExamples(Dataset):
    """Latents [16, h, w] and caption features [L, D] per example, all in memory."""

    def __init__(self, latents: list[torch.Tensor], captions: list[torch.Tensor]) -> None:
        self.latents, self.captions = latents, captions

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"latents": self.latents[index], "caption": self.captions[index], "index": index}

    def subset(self, count: int) -> CachedExamples:
        return CachedExamples(self.latents[:count], self.captions[:count])


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Latents stack (one resolution); caption features stay a list (lengths differ)."""
    return {
        "latents": torch.stack([item["latents"] for item in items]),
        "captions": [item["caption"] for item in items],
        "index": torch.tensor([item["index"] for item in items]),
    }


def cache_key(examples: list[Example], resolution: int, options: EncodingOptions, model_ids: list[str]) -> str:
    """Changes when any image file, caption, resolution, encoding option or model weight changes."""
    manifest = [(str(e.image.resolve()), e.image.stat().st_size, e.image.stat().st_mtime_ns, e.caption) for e in examples]
    payload = json.dumps([manifest, resolution, options.to_dict(), model_ids], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_cache(examples: list[Example], resolution: int, encoder: Any, vae: torch.nn.Module,
                options: EncodingOptions, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Encode every image and caption; returns the tensors to store (`latent.i`, `caption.i`)."""
    tensors: dict[str, torch.Tensor] = {}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        pixels = torch.stack([load_image(e.image, resolution) for e in chunk])
        encoded = encoder.encode([e.caption for e in chunk], options)
        for offset, (latent, caption) in enumerate(zip(encode_latents(vae, pixels), encoded)):
            tensors[f"latent.{start + offset}"] = latent.contiguous()
            tensors[f"caption.{start + offset}"] = caption.embeddings.detach().float().cpu().contiguous()
    return tensors


def save_cache(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write atomically, so an interrupted run never leaves a half cache that looks complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    save_file(tensors, str(partial))
    os.replace(partial, path)


def examples_from_tensors(tensors: dict[str, torch.Tensor], count: int) -> CachedExamples:
    return CachedExamples([tensors[f"latent.{i}"] for i in range(count)], [tensors[f"caption.{i}"] for i in range(count)])


# ----- the datamodule -----------------------------------------------------------------


def _zstripe(folder: Path, resolution: int, seed: int) -> None:
    write_synthetic_style(folder, count=16, size=max(64, resolution), seed=seed)


def _world_striped(folder: Path, resolution: int, seed: int) -> None:
    write_world_style_dataset(folder, count=256, size=resolution, seed=seed, style="striped")


SYNTHETIC_DATASETS = {False: None, True: _zstripe, "zstripe": _zstripe, "world_striped": _world_striped}


class ImageCaptionDataModule(L.LightningDataModule):
    """Captioned images for `fit`, served as cached latents + caption features.

    Args:
        folder: the images (searched recursively) with their captions.
        resolution: training side in pixels, a multiple of 16 (images are resized and center-cropped square).
        captions_file: a .json or .csv of captions (default: captions.json/.csv in the folder, else sidecar .txt).
        batch_size: images per training step (use trainer.accumulate_grad_batches for larger effective batches).
        encoding: EncodingOptions overrides for the captions, e.g. {hidden_layer: -3}; the
            validation prompts use the same.
        cache_dir: where the latent/caption cache lives (default: <run folder>/cache).
        val_examples: examples (from the start of the folder) in the fixed validation loss.
        run_name: the run folder under lightning_logs/.
        synthesize_if_missing: when `folder` does not exist, write a synthetic dataset there so a
            config runs from a fresh clone: true / "zstripe" (llm_dit.training.synthetic_style: 16
            images in one palette), "world_striped" (llm_dit.world_model.style_data: 256 world
            scenes whose objects are all striped, captions that never say so).
        num_workers: DataLoader workers (the data is in memory: 0 is usually best).
        seed: shuffling seed.
    """

    def __init__(
        self,
        folder: str,
        resolution: int = 512,
        captions_file: str | None = None,
        batch_size: int = 1,
        encoding: dict[str, Any] | None = None,
        cache_dir: str | None = None,
        val_examples: int = 2,
        run_name: str = "style_adapter",
        synthesize_if_missing: bool | str = False,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if resolution < LATENT_MULTIPLE or resolution % LATENT_MULTIPLE:
            nearest = max(LATENT_MULTIPLE, round(resolution / LATENT_MULTIPLE) * LATENT_MULTIPLE)
            raise ValueError(f"resolution must be a positive multiple of {LATENT_MULTIPLE}, got {resolution} (nearest: {nearest})")
        if batch_size < 1 or val_examples < 1:
            raise ValueError(f"batch_size and val_examples must be >= 1, got {batch_size} and {val_examples}")
        self.folder, self.resolution, self.captions_file = Path(folder).expanduser(), resolution, captions_file
        self.batch_size, self.val_examples, self.num_workers, self.seed = batch_size, val_examples, num_workers, seed
        self.encoding_options = EncodingOptions().with_overrides(encoding or {})
        if synthesize_if_missing not in SYNTHETIC_DATASETS:
            raise ValueError(f"synthesize_if_missing must be one of {list(SYNTHETIC_DATASETS)}, got {synthesize_if_missing!r}")
        self.cache_dir, self.run_name, self.synthesize_if_missing = cache_dir, run_name, synthesize_if_missing
        self.examples: list[Example] | None = None
        self.dataset: CachedExamples | None = None
        self.cache_path: Path | None = None
        if self.folder.exists() or not synthesize_if_missing:
            self.examples = find_examples(self.folder, captions_file)  # bad data fails before any model loads

    def prepare_data(self) -> None:
        if not self.folder.exists() and self.synthesize_if_missing:
            SYNTHETIC_DATASETS[self.synthesize_if_missing](self.folder, self.resolution, self.seed)

    def setup(self, stage: str) -> None:
        if self.examples is None:
            self.examples = find_examples(self.folder, self.captions_file)

    # ----- cache ----------------------------------------------------------------------

    def prepare_cache(self, encoder: Any, vae: torch.nn.Module) -> Path:
        """Load the cache, building it first with `encoder` (ZImageTextEncoder) and `vae` if missing."""
        self.setup("fit")
        key = cache_key(self.examples, self.resolution, self.encoding_options,
                        [model_fingerprint(encoder.text_encoder), model_fingerprint(vae)])
        path = self._cache_folder() / f"latents-{key}.safetensors"
        if not path.is_file():
            tensors = build_cache(self.examples, self.resolution, encoder, vae, self.encoding_options)
            if self.trainer is None or self.trainer.is_global_zero:
                save_cache(path, tensors)
        else:
            tensors = load_file(str(path))
        self.dataset, self.cache_path = examples_from_tensors(tensors, len(self.examples)), path
        return path

    def _cache_folder(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir).expanduser()
        if self.trainer is not None:
            return run_dir(self.trainer) / "cache"
        return self.folder / ".llm_dit_cache"

    def _cached(self) -> CachedExamples:
        if self.dataset is None:
            module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
            if module is None or getattr(module, "encoder", None) is None:
                raise RuntimeError("ImageCaptionDataModule needs its cache: call prepare_cache(encoder, vae) or run it in a Trainer")
            self.prepare_cache(module.encoder, module.vae)
        return self.dataset

    # ----- loaders --------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._cached(), batch_size=self.batch_size, shuffle=True, collate_fn=collate,
                          num_workers=self.num_workers, generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        """A fixed subset with fixed noise and sigmas (see llm_dit.training.objective.validation_noise): a comparable loss curve."""
        subset = self._cached().subset(self.val_examples)
        return DataLoader(subset, batch_size=self.batch_size, shuffle=False, collate_fn=collate, num_workers=self.num_workers)

    def state_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "examples": len(self.examples or []), "resolution": self.resolution}
