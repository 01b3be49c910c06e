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
from llm_dit.encoding.cache import EmbeddingCache, to_cpu
from llm_dit.encoding.encoder import EncodedPrompt, ZImageTextEncoder
from llm_dit.encoding.options import EncodingOptions
from llm_dit.models.components import ZImageComponents
from llm_dit.models.config import ZImageConfig
from llm_dit.models.loading import check_weights_source, load_components
from llm_dit.models.placement import Placement
from llm_dit.outputs import GeneratedBatch, load_png
from llm_dit.sampling.euler import decode_latents, denoise, initial_noise
from llm_dit.sampling.schedule import make_scheduler
from llm_dit.sampling.step_cache import StepCache
from llm_dit.study import Study, StudyItem
from llm_dit.training import hooks as training
from llm_dit.training.config import AdapterConfig, FlowMatchObjective
from surgery.cache import tensor_version

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ZImageModule(L.LightningModule):
    """Z-Image-Turbo (or the embedded tiny model) as a LightningModule.

    Args:
        weights: "tiny" (embedded, no download), a diffusers-format Z-Image folder, or a hub id.
        dtype: weights dtype: float32 | bfloat16 | float16.
        tiny_seed: seed of the tiny preset's random weights.
        cache_refiner: reuse the context refiner's output across steps (bit-identical).
        record_refiner_drift: probe the context refiner and report per-layer token drift (mean
            cosine of each caption row before vs after the block, at the first step; pad rows excluded).
        progress: show a per-step progress bar inside each batch.
        encoder_padding: "none" encodes each prompt unpadded (no wasted work, and a
            prompt's features never depend on its batch-mates); "diffusers" pads the
            batch to max_length as ZImagePipeline does (bit-identical to it).
        adapter: `fit` only: the context-refiner style adapter to train (variant lora | full |
            extra_blocks, rank, alpha, learning_rate, ...; see llm_dit.training.AdapterConfig).
        objective: `fit` only: flow-matching sigma sampling (see llm_dit.training.FlowMatchObjective).
        gradient_checkpointing: `fit` only: recompute block activations in backward (less memory).
        validation_prompts: `fit` only: prompts sampled at every validation, logged as a TensorBoard grid.
        validation_seeds: `fit` only: one grid column per seed.
        validation_sampler: `fit` only: SamplerSettings overrides for those samples (size defaults
            to the training resolution). How often: trainer.val_check_interval.
        compile: torch.compile; True compiles the DiT blocks (regional, shape-generic: no
            recompiles across prompts), the text encoder's layers and the VAE decoder; a list
            picks parts ("dit", "encoder", "vae"). Same images up to bf16 rounding (llm_dit.accel).
        share_steps: predict only: conditions whose schedules start alike (shift and step
            sweeps all start at sigma = 1) compute those steps once per prompt and seed
            (llm_dit.sampling.step_cache; bit-identical images).
        attention_backend: the DiT's attention kernel: None (diffusers' default), "auto"
            (cuDNN on Hopper), or a diffusers backend name such as "_native_cudnn".
        fp8: opt-in float8 linears in the DiT (H100/H200; generation only); changes images slightly.
        free_encoder_after_encoding: predict only: encode every prompt of the study first, then
            free the text encoder (~8 GB for Qwen3-4B), before any image is generated.
        placement: dtype per component and VAE tiling (llm_dit.models.Placement). Under the
            CLI the trainer decides the device; per-component devices and offload apply when
            the components are used directly (`load_components(..., placement=...)`).
        text_encoder_override: another encoder of the same hidden size (folder or single file),
            e.g. Qwen3-Embedding-4B, swapped in for the next ablation.
        allow_pickle: accept pickle checkpoints (.bin/.pt/.ckpt); off because they can run code.
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
        adapter: AdapterConfig | None = None,
        objective: FlowMatchObjective | None = None,
        gradient_checkpointing: bool = False,
        validation_prompts: list[str] | None = None,
        validation_seeds: list[int] | None = None,
        validation_sampler: dict[str, Any] | None = None,
        compile: bool | list[str] = False,
        share_steps: bool = True,
        attention_backend: str | None = None,
        fp8: bool = False,
        free_encoder_after_encoding: bool = False,
        placement: Placement | None = None,
        text_encoder_override: str | None = None,
        allow_pickle: bool = False,
    ) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        check_weights_source(weights, allow_pickle=allow_pickle, text_encoder_override=text_encoder_override)
        compile_parts(compile)
        self.save_hyperparameters()
        self.components: ZImageComponents | None = None
        self.encoder: ZImageTextEncoder | None = None
        self.embedding_cache = EmbeddingCache()  # on the CPU; entries leave after their last planned use
        self.finished_items: dict[str, Path] = {}
        self.step_cache: StepCache | None = None
        training.init_training(self, adapter, objective, validation_prompts, validation_seeds, validation_sampler)

    # ----- model ------------------------------------------------------------------

    def configure_model(self) -> None:
        """Load weights lazily, so config errors surface before any model loads."""
        if self.components is not None:
            return
        components = load_components(
            self.hparams.weights, dtype=DTYPES[self.hparams.dtype], seed=self.hparams.tiny_seed,
            placement=self.hparams.placement, text_encoder_override=self.hparams.text_encoder_override,
            allow_pickle=self.hparams.allow_pickle,
        )
        self.components = components
        # Registered as children so Lightning moves them to the device.
        self.text_encoder = components.text_encoder
        self.transformer = components.transformer
        self.vae = components.vae
        self.encoder = ZImageTextEncoder(components.text_encoder, components.tokenizer, padding=self.hparams.encoder_padding)
        parts = compile_parts(self.hparams.compile)
        if parts or self.hparams.attention_backend or self.hparams.fp8:
            accelerate(self.transformer, compile="dit" in parts,
                       attention_backend=self.hparams.attention_backend, fp8=self.hparams.fp8)
            if "encoder" in parts:
                compile_text_encoder(self.text_encoder)
            if "vae" in parts:
                compile_vae_decoder(self.vae)
        training.configure_training(self)  # fit only: swap in the adapter, cache the data, free the encoder

    def validate_study(self, study: Study) -> None:
        """Checks that need the model's shape (not its weights): hidden layers, surgery and
        skip-layer-guidance indices against the encoder's and transformer's block counts."""
        config = ZImageConfig.from_weights(self.hparams.weights, self.hparams.text_encoder_override,
                                           self.hparams.allow_pickle)
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
        if self.hparams.share_steps and not self.hparams.record_refiner_drift:
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
        if not self.hparams.free_encoder_after_encoding:
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
        latents = initial_noise([item.seed for item in items], sampler.height, sampler.width).to(device)
        scheduler = make_scheduler(self.components.scheduler, sampler.steps, sampler.shift, device)
        slg = None
        if sampler.skip_layer_guidance:
            slg = surgery.SkipLayerGuidance.from_dict(dict(sampler.skip_layer_guidance))
            slg.validate(self.transformer)
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
        shared = (guidance, repr(list(items[0].surgery)), self.hparams.cache_refiner, self.transformer.dtype, weights)
        return [(item.prompt, item.encoding, item.seed, item.sampler.height, item.sampler.width, shared) for item in items]

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
