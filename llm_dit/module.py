"""ZImageModule: encoder, context refiner + DiT and VAE as one LightningModule.

`predict_step` turns a batch of study items (one condition each batch) into
images: encode (cached per prompt x encoding condition) -> surgery-wrapped
transformer -> Euler sampler -> VAE. Items already written by an earlier run are
read back from disk instead, so callbacks see every item after a resume.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image

import surgery
from llm_dit.encoding.encoder import EncodedPrompt, ZImageTextEncoder
from llm_dit.encoding.options import EncodingOptions
from llm_dit.models.components import ZImageComponents
from llm_dit.models.loading import check_weights_source, load_components
from llm_dit.outputs import GeneratedBatch
from llm_dit.sampling.euler import decode_latents, denoise, initial_noise
from llm_dit.sampling.schedule import make_scheduler
from llm_dit.study import Study, StudyItem

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ZImageModule(L.LightningModule):
    """Z-Image-Turbo (or the embedded tiny model) as a LightningModule.

    Args:
        weights: "tiny" (embedded, no download), a diffusers-format Z-Image folder, or a hub id.
        dtype: weights dtype: float32 | bfloat16 | float16.
        tiny_seed: seed of the tiny preset's random weights.
        cache_refiner: reuse the context refiner's output across steps (bit-identical).
        record_refiner_drift: probe the context refiner and report per-layer token drift.
        progress: show a per-step progress bar inside each batch.
        encoder_padding: "none" encodes each prompt unpadded (no wasted work, and a
            prompt's features never depend on its batch-mates); "diffusers" pads the
            batch to max_length as ZImagePipeline does (bit-identical to it).
    """

    def __init__(
        self,
        weights: str = "tiny",
        dtype: str = "float32",
        tiny_seed: int = 0,
        cache_refiner: bool = True,
        record_refiner_drift: bool = False,
        progress: bool = False,
        encoder_padding: str = "none",
    ) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        check_weights_source(weights)
        self.save_hyperparameters()
        self.components: ZImageComponents | None = None
        self.encoder: ZImageTextEncoder | None = None
        self.embedding_cache: dict[tuple[str, EncodingOptions], EncodedPrompt] = {}
        self.finished_items: dict[str, Path] = {}

    # ----- model ------------------------------------------------------------------

    def configure_model(self) -> None:
        """Load weights lazily, so config errors surface before any model loads."""
        if self.components is not None:
            return
        components = load_components(self.hparams.weights, dtype=DTYPES[self.hparams.dtype], seed=self.hparams.tiny_seed)
        self.components = components
        # Registered as children so Lightning moves them to the device.
        self.text_encoder = components.text_encoder
        self.transformer = components.transformer
        self.vae = components.vae
        self.encoder = ZImageTextEncoder(components.text_encoder, components.tokenizer, padding=self.hparams.encoder_padding)

    def validate_study(self, study: Study) -> None:
        """Checks that need the model's shape (not its weights): hidden-layer range."""
        from llm_dit.models.inspect import encoder_hidden_states

        count = encoder_hidden_states(self.hparams.weights)
        if count is None:
            return
        for item in study.items():
            item.encoding.layer_indices(count)

    # ----- encoding -----------------------------------------------------------------

    def encode(self, prompts: list[str], options: EncodingOptions) -> list[EncodedPrompt]:
        """Encode with a cache keyed by (prompt, options): conditions that share
        encoding (seeds, sampler sweeps, surgery) encode each prompt once."""
        missing = list(dict.fromkeys(p for p in prompts if (p, options) not in self.embedding_cache))
        if missing:
            for prompt, encoded in zip(missing, self.encoder.encode(missing, options)):
                self.embedding_cache[(prompt, options)] = encoded
        return [self.embedding_cache[(p, options)] for p in prompts]

    # ----- prediction ---------------------------------------------------------------

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Study items hold no tensors (they are frozen dataclasses): nothing to move."""
        if isinstance(batch, list) and batch and isinstance(batch[0], StudyItem):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def predict_step(self, batch: list[StudyItem], batch_idx: int = 0) -> GeneratedBatch:
        resumed = [item.item_id in self.finished_items for item in batch]
        todo = [item for item, done in zip(batch, resumed) if not done]
        generated, encodings, extras, seconds, peak = self.generate(todo) if todo else (None, [], {}, 0.0, None)
        images, embeddings, encoding_list = [], [], []
        todo_index = 0
        for item, done in zip(batch, resumed):
            if done:
                images.append(load_png(self.finished_items[item.item_id]))
                embeddings.append(None)
                encoding_list.append(None)
            else:
                images.append(generated[todo_index])
                embeddings.append(encodings[todo_index].embeddings.detach().float().cpu())
                encoding_list.append(encodings[todo_index])
                todo_index += 1
        per_item_extras = {key: _spread(values, resumed) for key, values in extras.items()}
        return GeneratedBatch(
            items=list(batch),
            images=torch.stack(images),
            seconds_per_image=seconds,
            peak_memory_bytes=peak,
            resumed=resumed,
            embeddings=embeddings,
            encodings=encoding_list,
            extras=per_item_extras,
        )

    @torch.no_grad()
    def generate(self, items: list[StudyItem]) -> tuple[torch.Tensor, list[EncodedPrompt], dict[str, list], float, int | None]:
        """Generate a batch that shares one condition. Returns images [B,3,H,W] in [0,1] (CPU)."""
        first = items[0]
        if any(item.batch_key() != first.batch_key() for item in items):
            raise ValueError("a batch must hold items of one condition and size")
        sampler = first.sampler
        device = self.transformer.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.synchronize(device)
        start = time.perf_counter()

        encodings = self.encode([item.prompt for item in items], first.encoding)
        cap_feats = [e.embeddings.to(device=device, dtype=self.transformer.dtype) for e in encodings]
        negative = None
        if sampler.uses_cfg:
            negative_encoding = self.encode([sampler.negative_prompt], first.encoding)[0]
            negative = [negative_encoding.embeddings.to(device=device, dtype=self.transformer.dtype)] * len(items)
        latents = initial_noise([item.seed for item in items], sampler.height, sampler.width).to(device)
        scheduler = make_scheduler(self.components.scheduler, sampler.steps, sampler.shift, device)
        slg = surgery.SkipLayerGuidance(**sampler.skip_layer_guidance) if sampler.skip_layer_guidance else None
        extras: dict[str, list] = {}
        with ExitStack() as stack:
            stack.enter_context(surgery.apply(self.transformer, surgery.parse_specs(list(first.surgery))))
            recorder = None
            if self.hparams.record_refiner_drift:
                recorder = stack.enter_context(surgery.record_block_io(self.transformer, target="context_refiner"))
            if self.hparams.cache_refiner:
                stack.enter_context(surgery.cache_context_refiner(self.transformer))
            latents = denoise(
                self.transformer, scheduler, latents, cap_feats, sampler.guidance_scale, negative, slg,
                on_step=self._progress_callback(first, sampler.steps),
            )
            if recorder is not None:
                extras["refiner_drift"] = _drift_rows(recorder, len(items))
        images = decode_latents(self.vae, latents).cpu()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - start) / len(items)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        return images, encodings, extras, seconds, peak

    def _progress_callback(self, item: StudyItem, steps: int):
        if not self.hparams.progress:
            return None
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"{item.condition}", leave=False)

        def on_step(step: int) -> None:
            bar.update(1)
            if step == steps - 1:
                bar.close()

        return on_step


def _drift_rows(recorder: Any, batch_size: int) -> list[list[float]]:
    """Per-item per-layer mean cosine similarity (first recorded call: step 0, positive branch)."""
    drift = surgery.embedding_drift(recorder)
    return [[float(v) for v in drift[i]] for i in range(batch_size)]


def _spread(values: list[Any], resumed: list[bool]) -> list[Any]:
    """Put per-generated-item values back at their batch positions (None for resumed)."""
    it = iter(values)
    return [None if done else next(it) for done in resumed]


def load_png(path: Path) -> torch.Tensor:
    """Read a PNG written by the writer back as [3,H,W] float32 in [0,1]."""
    with Image.open(path) as image:
        array = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
        return array.view(image.height, image.width, 3).permute(2, 0, 1).float() / 255.0
