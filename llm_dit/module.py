"""ZImageModule: encoder, context refiner + DiT and VAE as one LightningModule.

`predict_step` turns a batch of study items (one condition each batch) into
images: encode (cached per prompt x encoding condition, on the CPU, until the
prompt's last pending item: llm_dit.encoding.cache) -> surgery-wrapped
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

import surgery
from llm_dit.accel import accelerate, compile_text_encoder, compile_vae_decoder
from llm_dit.accel.compile import compile_parts
from llm_dit.accel.refiner_cache import cache_context_refiner, tensor_version
from llm_dit.encoding.cache import EmbeddingCache, item_keys, to_cpu
from llm_dit.encoding.encoder import EncodedPrompt, ZImageTextEncoder
from llm_dit.encoding.options import EncodingOptions
from llm_dit.encoding.saved import SavedEmbeddings
from llm_dit.models.components import ZImageComponents
from llm_dit.models.config import ZImageConfig
from llm_dit.models.loading import check_weights_source, load_components
from llm_dit.models.placement import Placement
from llm_dit.models.without_encoder import load_components_without_text_encoder
from llm_dit.module_settings import (
    FitSettings, LoadSettings, PredictSettings, SpeedSettings, coerce, flat_options, plain,
)
from llm_dit.outputs import GeneratedBatch, load_png
from llm_dit.sampling.euler import decode_latents, denoise, initial_noise, vae_scale_factor
from llm_dit.sampling.schedule import make_scheduler
from llm_dit.sampling.step_cache import StepCache
from llm_dit.study import Study, StudyItem
from llm_dit.training import lifecycle as training

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ZImageModule(L.LightningModule):
    """Z-Image-Turbo (or the embedded tiny model) as a LightningModule.

    Args:
        weights: "tiny" (embedded, no download), "tiny-random", "random-z-image-turbo", a
            diffusers-format Z-Image folder, a folder of single-file checkpoints, or a hub id.
        dtype: weights dtype: float32 | bfloat16 | float16.
        embeddings: predict only: a saved-embeddings folder (`python -m llm_dit.cli encode`): prompts
            are read from it and the text encoder is never loaded (llm_dit.encoding.saved). Features of
            another encoder are refused before any model loads.
        load: how the weights load (LoadSettings: tiny_seed, placement, text_encoder_override, allow_pickle).
        speed: speed options (SpeedSettings: compile, attention_backend, fp8, cache_refiner, share_steps).
        predict: predict behaviour (PredictSettings: encoder_padding, record_refiner_drift,
            free_encoder_after_encoding, progress).
        fit: the style adapter that `fit` trains (FitSettings: adapter, objective, gradient_checkpointing,
            validation_prompts, validation_seeds, validation_sampler).

    Each group takes its dataclass or a dict of its fields (llm_dit.module_settings documents them).
    """

    def __init__(
        self,
        weights: str = "tiny",
        dtype: str = "float32",
        embeddings: str | None = None,
        load: LoadSettings | None = None,
        speed: SpeedSettings | None = None,
        predict: PredictSettings | None = None,
        fit: FitSettings | None = None,
    ) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        self.load_settings: LoadSettings = coerce(LoadSettings, load, "load")
        if isinstance(self.load_settings.placement, dict):  # from hparams.yaml / a checkpoint
            self.load_settings.placement = Placement(**self.load_settings.placement)
        self.speed_settings: SpeedSettings = coerce(SpeedSettings, speed, "speed")
        self.predict_settings: PredictSettings = coerce(PredictSettings, predict, "predict")
        self.fit_settings: FitSettings = coerce(FitSettings, fit, "fit")
        load_settings = self.load_settings
        check_weights_source(weights, allow_pickle=load_settings.allow_pickle,
                             text_encoder_override=load_settings.text_encoder_override)
        compile_parts(self.speed_settings.compile)
        if embeddings is not None and self.fit_settings.adapter is not None:
            raise ValueError("model.embeddings is for predict and serve; fit encodes its own captions and "
                             "validation prompts: leave --model.embeddings out")
        self.saved_embeddings = None if embeddings is None else SavedEmbeddings.open(
            embeddings, weights, load_settings.text_encoder_override, load_settings.tiny_seed, load_settings.allow_pickle)
        # Plain data in hparams: checkpoints then load with weights_only and hparams.yaml stays readable.
        self.save_hyperparameters({
            "weights": weights, "dtype": dtype, "embeddings": embeddings, "load": plain(self.load_settings),
            "speed": plain(self.speed_settings), "predict": plain(self.predict_settings), "fit": plain(self.fit_settings),
        })
        self.components: ZImageComponents | None = None
        self.encoder: ZImageTextEncoder | None = None
        self.embedding_cache = EmbeddingCache()  # on the CPU; entries leave after their last planned use
        self.finished_items: dict[str, Path] = {}
        self.step_cache: StepCache | None = None
        training.init_training(self, self.fit_settings)

    def options(self) -> dict[str, Any]:
        """Every option by its own name, groups flattened (resume fingerprints compare these)."""
        return flat_options(self.hparams)

    # ----- model ------------------------------------------------------------------

    def configure_model(self) -> None:
        """Load weights lazily, so config errors surface before any model loads."""
        if self.components is not None:
            return
        load = self.load_settings
        if self.saved_embeddings is not None:  # generate from saved features: never load the encoder
            components = load_components_without_text_encoder(
                self.hparams.weights, dtype=DTYPES[self.hparams.dtype], seed=load.tiny_seed,
                placement=load.placement, allow_pickle=load.allow_pickle, caption_dim=self.saved_embeddings.dim,
            )
        else:
            components = load_components(
                self.hparams.weights, dtype=DTYPES[self.hparams.dtype], seed=load.tiny_seed, placement=load.placement,
                text_encoder_override=load.text_encoder_override, allow_pickle=load.allow_pickle,
            )
        self.components = components
        # Registered as children so Lightning moves them to the device.
        self.text_encoder = components.text_encoder
        self.transformer = components.transformer
        self.vae = components.vae
        self.encoder = self.saved_embeddings or ZImageTextEncoder(
            components.text_encoder, components.tokenizer, padding=self.predict_settings.encoder_padding)
        speed = self.speed_settings
        parts = compile_parts(speed.compile)
        if parts or speed.attention_backend or speed.fp8:
            accelerate(self.transformer, compile="dit" in parts, attention_backend=speed.attention_backend, fp8=speed.fp8)
            if "encoder" in parts and self.text_encoder is not None:
                compile_text_encoder(self.text_encoder)
            if "vae" in parts:
                compile_vae_decoder(self.vae)
        training.configure_training(self)  # fit only: swap in the adapter, cache the data, free the encoder

    def validate_study(self, study: Study, items: list[StudyItem] | None = None) -> None:
        """Checks that need the model's shape (not its weights): hidden layers, surgery and
        skip-layer-guidance indices against the encoder's and transformer's block counts; with saved
        embeddings, that `items` (default: the whole study) are all saved."""
        config = ZImageConfig.from_weights(self.hparams.weights, self.load_settings.text_encoder_override,
                                           self.load_settings.allow_pickle)
        hidden_states = None if config is None else config.hidden_states
        blocks = None if config is None else config.block_counts
        checked = set()
        for item in study.items():
            key = (item.condition_index,)
            if key in checked:
                continue
            checked.add(key)
            where = f"condition {item.condition!r}"
            try:
                if hidden_states is not None:
                    item.encoding.layer_indices(hidden_states)
                if blocks is not None:
                    surgery.validate_specs(surgery.parse_specs(list(item.surgery)), blocks)
                    if item.sampler.skip_layer_guidance:
                        guidance = surgery.SkipLayerGuidance.from_dict(dict(item.sampler.skip_layer_guidance))
                        guidance.check_block_counts(blocks)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
        if self.saved_embeddings is not None:
            self.saved_embeddings.check_covers(
                [key for item in (study.items() if items is None else items) for key in item_keys(item)])

    # ----- encoding -----------------------------------------------------------------

    def encode(self, prompts: list[str], options: EncodingOptions) -> list[EncodedPrompt]:
        """Encode with a cache keyed by (prompt, options): conditions that share
        encoding (seeds, sampler sweeps, surgery) encode each prompt once. Results
        live on the CPU (`generate` moves a batch's captions to the device)."""
        unique = list(dict.fromkeys(prompts))
        found = {p: self.embedding_cache[(p, options)] for p in unique if (p, options) in self.embedding_cache}
        missing = [p for p in unique if p not in found]
        if missing:
            for prompt, encoded in zip(missing, self.encoder.encode(missing, options)):
                found[prompt] = to_cpu(encoded)
                self.embedding_cache[(prompt, options)] = found[prompt]
        return [found[p] for p in prompts]

    def pre_encode(self, items: list[StudyItem]) -> None:
        """Fill the embedding cache for `items` (their prompts, and negatives where CFG is on)."""
        prompts: dict[EncodingOptions, list[str]] = {}
        for item in items:
            prompts.setdefault(item.encoding, []).append(item.prompt)
            if item.sampler.uses_cfg:
                prompts[item.encoding].append(item.sampler.negative_prompt)
        for options, texts in prompts.items():
            self.encode(texts, options)

    # ----- prediction ---------------------------------------------------------------

    def plan_shared_steps(self, items: list[StudyItem]) -> StepCache | None:
        """Before generating `items`: a step cache for the sigma prefixes their schedules share
        (None when nothing is shared, `share_steps` is off, or refiner drift is recorded,
        which needs every step to run)."""
        self.step_cache = None
        if self.speed_settings.share_steps and not self.predict_settings.record_refiner_drift:
            settings = {(item.sampler.steps, item.sampler.shift) for item in items}
            schedules = [make_scheduler(self.components.scheduler, steps, shift).sigmas.tolist() for steps, shift in settings]
            cache = StepCache.for_schedules(schedules)
            self.step_cache = cache if cache.prefixes else None
        return self.step_cache

    def on_predict_start(self) -> None:
        items = getattr(self.trainer.datamodule, "items", None)
        if items is not None:
            self.plan_shared_steps(items)
            self.embedding_cache.plan(self._items_of_this_process(items))
        if not self.predict_settings.free_encoder_after_encoding or self.saved_embeddings is not None:
            return
        if items is None:
            raise ValueError("free_encoder_after_encoding needs the study's items: run predict with a StudyDataModule")
        self.pre_encode([item for item in items if item.item_id not in self.finished_items])
        training.release(self, "text_encoder")

    def on_predict_end(self) -> None:
        self.step_cache = None
        self.embedding_cache.end_plan()

    def _items_of_this_process(self, items: list[StudyItem]) -> list[StudyItem]:
        """The items this rank's predict loader will serve (under DDP its sampler holds a share of
        the batches); all of `items` when the loader is not a study's batch list."""
        loaders = getattr(self.trainer, "predict_dataloaders", None)
        loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
        dataset, sampler = getattr(loader, "dataset", None), getattr(loader, "sampler", None)
        if dataset is None or sampler is None:
            return items
        try:
            batches = [dataset[index] for index in sampler]
        except (TypeError, IndexError, KeyError):
            return items
        if not all(isinstance(b, list) and all(isinstance(i, StudyItem) for i in b) for b in batches):
            return items
        return [item for batch in batches for item in batch]

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
        self.embedding_cache.release(batch)  # drop encodings no pending item needs
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
        caption_lengths = [len(c) for c in cap_feats + (negative or [])]  # rows of a transformer call
        latents = initial_noise([item.seed for item in items], sampler.height, sampler.width,
                                vae_scale_factor=vae_scale_factor(self.components.vae)).to(device)
        scheduler = make_scheduler(self.components.scheduler, sampler.steps, sampler.shift, device)
        slg = None
        if sampler.skip_layer_guidance:
            slg = surgery.SkipLayerGuidance.from_dict(dict(sampler.skip_layer_guidance))
            slg.validate(self.transformer)
        extras: dict[str, list] = {}
        with ExitStack() as stack:
            stack.enter_context(surgery.apply(self.transformer, surgery.parse_specs(list(first.surgery))))
            recorder = None
            if self.predict_settings.record_refiner_drift:
                recorder = stack.enter_context(surgery.record_block_io(self.transformer, target="context_refiner"))
            if self.speed_settings.cache_refiner:
                stack.enter_context(cache_context_refiner(self.transformer))
            latents = denoise(
                self.transformer, scheduler, latents, cap_feats, sampler.guidance_scale, negative, slg,
                on_step=self._progress_callback(first, sampler.steps), step_cache=self.step_cache,
                row_keys=self._row_keys(items) if self.step_cache is not None else None,
            )
            if recorder is not None:
                extras["refiner_drift"] = _drift_rows(recorder, caption_lengths, len(items))
        images = decode_latents(self.vae, latents).cpu()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - start) / len(items)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        return images, encodings, extras, seconds, peak

    def _row_keys(self, items: list[StudyItem]) -> list[tuple]:
        """What a row's predictions depend on besides the schedule (StepCache keys): its
        prompt encoding, seed and size, the guidance and surgery of its condition, and the
        DiT's weights (dtype, and object and in-place version of every parameter and buffer)."""
        sampler = items[0].sampler
        guidance = (sampler.guidance_scale, sampler.negative_prompt if sampler.uses_cfg else None,
                    repr(sampler.skip_layer_guidance))
        weights = tuple((id(t), tensor_version(t)) for t in (*self.transformer.parameters(), *self.transformer.buffers()))
        shared = (guidance, repr(list(items[0].surgery)), self.speed_settings.cache_refiner, self.transformer.dtype, weights)
        return [(item.prompt, item.encoding, item.seed, item.sampler.height, item.sampler.width, shared) for item in items]

    def _progress_callback(self, item: StudyItem, steps: int):
        if not self.predict_settings.progress:
            return None
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"{item.condition}", leave=False)

        def on_step(step: int) -> None:
            bar.update(1)
            if step == steps - 1:
                bar.close()

        return on_step

    # ----- training: a context-refiner style adapter (llm_dit/training) -------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return training.training_step(self, batch)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return training.validation_step(self, batch, batch_idx)

    def configure_optimizers(self) -> dict[str, Any]:
        return training.configure_optimizers(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        training.on_save_checkpoint(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        training.on_load_checkpoint(self, checkpoint)

    def on_fit_end(self) -> None:
        training.export_adapter(self)


def _drift_rows(recorder: Any, caption_lengths: list[int], batch_size: int) -> list[list[float]]:
    """Per-item per-layer mean cosine similarity over the caption's own rows (not Z-Image's
    learned pad tokens, which fill each caption up to a multiple of 32), from the first
    recorded call (step 0; its first `batch_size` rows are the positive captions). A call
    that length grouping split into sub-batches is put back together by row."""
    drift = surgery.embedding_drift(recorder, lengths=caption_lengths)
    return [[float(v) for v in drift[i]] for i in range(batch_size)]


def _spread(values: list[Any], resumed: list[bool]) -> list[Any]:
    """Put per-generated-item values back at their batch positions (None for resumed)."""
    it = iter(values)
    return [None if done else next(it) for done in resumed]
