"""Train the embedded world model, one stage at a time, in resumable pieces.

    python -m llm_dit.world_model.train --config configs/world_model/train.yaml --stage vae
    python -m llm_dit.world_model.train --config configs/world_model/train.yaml --stage encoder
    python -m llm_dit.world_model.train --config configs/world_model/train.yaml --stage dit

A stage runs until its `max_steps` or `max_minutes` (a piece), checkpointing to
`<output_dir>/<stage>/checkpoints/last.ckpt`; running the same command again
resumes there. Every piece ends by exporting the stage's weights (bf16 safetensors,
diffusers layout) to `<output_dir>/export/<component>/` and a JSON line of its
measurements to `<output_dir>/log.jsonl`. The DiT stage reads the exported VAE and
encoder, so it trains on exactly the features inference will compute.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from diffusers import AutoencoderKL, ZImageTransformer2DModel
from jsonargparse import CLI
from safetensors.torch import save_file
from transformers import Qwen3Model

from llm_dit.models.tiny import load_bundled_tokenizer
from llm_dit.world_model.config import IMAGE_SIZE, StageSettings, WorldTrainingConfig
from llm_dit.world_model.data import build_world, chat_lm_text, dit_prompt_text, images_to_tensor
from llm_dit.world_model.encoder_probe import composition_probe, feature_separation, probe_encoder
from llm_dit.world_model.stages import DitStage, EncoderStage, TensorBatches, VaeStage, frozen_encoder_features

Stage = Literal["vae", "encoder", "dit"]
COMPONENT = {"vae": "vae", "encoder": "text_encoder", "dit": "transformer"}


class _DeviceData(L.Callback):
    """Gives the stage its device-resident tensors and turns index batches into data batches."""

    def __init__(self, tensors: dict[str, torch.Tensor], make_batch) -> None:
        self.tensors, self.make_batch = tensors, make_batch

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.tensors = {k: v.to(pl_module.device) for k, v in self.tensors.items()}
        pl_module.fetch = lambda indices: self.make_batch(self.tensors, indices.to(pl_module.device))


def _tokenize(texts: list[str], tokenizer, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    lengths = torch.tensor([min(len(ids), max_tokens) for ids in encoded])
    ids = torch.full((len(texts), int(lengths.max())), tokenizer.pad_token_id, dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, : lengths[row]] = torch.tensor(tokens[:max_tokens])
    return ids, lengths


class _PrintProgress(L.Callback):
    """One line every `every` steps (a progress bar would flood a remote log)."""

    def __init__(self, every: int = 500) -> None:
        self.every, self.start = every, time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step % self.every == 0:
            metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
            print(f"step {trainer.global_step} {time.perf_counter() - self.start:.0f}s {metrics}", flush=True)


def piece_time_limit(checkpoint: dict | None, max_minutes: float) -> timedelta:
    """The Trainer's `max_time` that gives this piece `max_minutes` of training.

    Lightning's Timer restores the training time of earlier pieces from the checkpoint and
    counts `max_time` over the whole run, so a resumed piece with `max_time=max_minutes`
    stopped after max_minutes minus the time already spent (the third session's second DiT
    piece ran 2.4 of its 5.2 minutes). The limit is therefore the earlier time plus this piece's.
    """
    earlier = 0.0
    for key, state in (checkpoint or {}).get("callbacks", {}).items():
        if "Timer" in str(key):
            earlier = float(state.get("time_elapsed", {}).get("train", 0.0))
    return timedelta(seconds=earlier) + timedelta(minutes=max_minutes)


def _trainer(stage_dir: Path, recipe_steps: int, max_time: timedelta, gradient_clip: float = 1.0) -> L.Trainer:
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=stage_dir / "checkpoints", save_last=True,
                                                      every_n_train_steps=500, save_top_k=0)
    loggers = [L.pytorch.loggers.TensorBoardLogger(stage_dir, name="tb"), L.pytorch.loggers.CSVLogger(stage_dir, name="csv")]
    return L.Trainer(
        max_steps=recipe_steps, max_time=max_time, precision="bf16-mixed" if torch.cuda.is_available() else "32-true",
        logger=loggers, callbacks=[checkpoints, _PrintProgress()], enable_progress_bar=False,
        log_every_n_steps=50, enable_model_summary=False, gradient_clip_val=gradient_clip, default_root_dir=stage_dir,
    )


def _fit(module: L.LightningModule, data: _DeviceData, batches: TensorBatches, stage_dir: Path,
         steps: int, max_minutes: float) -> int:
    last = stage_dir / "checkpoints" / "last.ckpt"
    # (mmap: only the step count and the timer are read here; Lightning loads the checkpoint itself below)
    checkpoint = torch.load(last, map_location="cpu", weights_only=False, mmap=True) if last.is_file() else None
    # A resumed piece draws new batches and noise: seeded by the step it starts from.
    start_step = int(checkpoint["global_step"]) if checkpoint else 0
    batches.seed = [batches.seed, start_step] if start_step else batches.seed
    L.seed_everything(int(np.random.default_rng(batches.seed).integers(2**31)) if start_step else batches.seed)
    original_step = module.training_step
    module.training_step = lambda indices, batch_idx: original_step(module.fetch(indices), batch_idx)
    trainer = _trainer(stage_dir, steps, piece_time_limit(checkpoint, max_minutes), module.settings.gradient_clip)
    trainer.callbacks.append(data)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer.fit(module, loader, ckpt_path=str(last) if last.is_file() else None)
    trainer.save_checkpoint(last)
    return trainer.global_step


def _log(output_dir: Path, record: dict) -> None:
    record = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), **record}
    print(json.dumps(record))
    with open(output_dir / "log.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")


def train_vae(recipe: WorldTrainingConfig, output_dir: Path, max_minutes: float) -> None:
    images, _ = build_world(recipe.seed, "train", recipe.train_scenes, IMAGE_SIZE)
    module = VaeStage(recipe.vae, kl_weight=recipe.kl_weight)
    data = _DeviceData({"images": torch.from_numpy(images)},
                       lambda t, i: images_to_tensor(t["images"][i]))
    steps = _fit(module, data, TensorBatches(len(images), recipe.vae.batch_size, recipe.seed), output_dir / "vae", recipe.vae.max_steps, max_minutes)
    vae = module.vae.float().eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae.to(device)
    with torch.no_grad():
        latents = torch.cat([vae.encode(images_to_tensor(torch.from_numpy(images[s:s + 1024]).to(device))).latent_dist.mode()
                             for s in range(0, min(len(images), 50_000), 1024)])
    vae.register_to_config(shift_factor=float(latents.mean()), scaling_factor=float(1.0 / latents.std()))
    export = output_dir / "export" / "vae"
    vae.to(torch.bfloat16).save_pretrained(export)
    heldout, _ = build_world(recipe.seed, "heldout", recipe.heldout_scenes, IMAGE_SIZE)
    vae = AutoencoderKL.from_pretrained(export, torch_dtype=torch.float32).to(device).eval()
    _log(output_dir, {"stage": "vae", "steps": steps, **reconstruction_psnr(vae, heldout, device)})


def reconstruction_psnr(vae: AutoencoderKL, images: np.ndarray, device: str) -> dict[str, float]:
    """Held-out reconstruction PSNR of 8-bit round trips (dB, mean over images)."""
    values = []
    with torch.no_grad():
        for s in range(0, len(images), 512):
            x = images_to_tensor(images[s:s + 512]).to(device)
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample
            y8 = ((y.clamp(-1, 1) + 1) * 127.5).round()
            x8 = torch.from_numpy(images[s:s + 512]).to(device).permute(0, 3, 1, 2).float()
            mse = ((y8 - x8) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-6)
            values.append(10 * torch.log10(255.0**2 / mse))
    values = torch.cat(values)
    return {"heldout_psnr_db": float(values.mean()), "heldout_psnr_db_p05": float(values.quantile(0.05))}


def train_encoder(recipe: WorldTrainingConfig, output_dir: Path, max_minutes: float) -> None:
    tokenizer = load_bundled_tokenizer()
    _, samples = build_world(recipe.seed, "train", recipe.train_scenes, IMAGE_SIZE, recipe.captions_per_scene)
    rng = np.random.default_rng([recipe.seed, 11])
    texts = [chat_lm_text(s.scene, c, rng) for s in samples for c in s.captions]
    ids, _ = _tokenize(texts, tokenizer, max_tokens=256)
    vocabulary = torch.unique(torch.cat([ids.flatten(), torch.tensor(tokenizer.all_special_ids)]))
    module = EncoderStage(recipe.encoder, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, vocabulary=vocabulary,
                          answer_start_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
                          answer_weight=recipe.encoder_answer_weight, tied_embeddings=recipe.encoder_tied_embeddings,
                          frozen_embeddings=recipe.encoder_frozen_embeddings, num_layers=recipe.encoder_layers)
    data = _DeviceData({"ids": ids}, lambda t, i: t["ids"][i])
    steps = _fit(module, data, TensorBatches(len(ids), recipe.encoder.batch_size, recipe.seed), output_dir / "encoder", recipe.encoder.max_steps, max_minutes)
    export = output_dir / "export" / "text_encoder"
    encoder = module.lm.model.float()
    unused = torch.ones(len(tokenizer), dtype=torch.bool)
    unused[vocabulary] = False
    with torch.no_grad():
        encoder.embed_tokens.weight[unused] = 0.0  # never trained: an unknown word reads as a zero row
    encoder.to(torch.bfloat16).save_pretrained(export)
    # Held-out perplexity with the exported (bf16) weights, in float32.
    _, heldout = build_world(recipe.seed, "heldout", recipe.heldout_scenes, IMAGE_SIZE, 1)
    rng = np.random.default_rng([recipe.seed, 12])
    held_ids, _ = _tokenize([chat_lm_text(s.scene, s.captions[0], rng) for s in heldout], tokenizer, max_tokens=256)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Perplexity over the same token set (held-out tokens outside it are rare; they count as unseen).
    head = None
    if not recipe.encoder_tied_embeddings:  # the head does not ship; kept beside the checkpoints for the copy test
        head = module.lm.lm_head.weight.detach().float().cpu().to(torch.bfloat16)
        save_file({"weight": head.contiguous()}, output_dir / "encoder" / "lm_head.safetensors")
        head = head.float()  # as exported: the copy test sees what a reload sees
    evaluator = exported_language_model(export, recipe.encoder, tokenizer, vocabulary, head)
    evaluator.to(device).eval()
    with torch.no_grad():
        losses = [evaluator.loss(held_ids[s:s + 512].to(device)) for s in range(0, len(held_ids), 512)]
    loss = float(torch.stack(losses).mean())
    copy = probe_encoder(evaluator.lm.model, tokenizer, scenes=300, seed=recipe.seed, vocabulary=vocabulary, output_head=head)
    _log(output_dir, {"stage": "encoder", "steps": steps, "heldout_loss": loss, "heldout_perplexity": float(np.exp(loss)),
                      "attribute_copy_accuracy": {kind: round(r["accuracy"], 4) for kind, r in copy.items()},
                      "feature_separation": feature_separation(evaluator.lm.model, tokenizer, seed=recipe.seed),
                      # layer -2 (the DiT's): can a linear probe read the shape of an unseen colour-shape pair?
                      "composition_probe": composition_probe(evaluator.lm.model, tokenizer, layers=[-2], seed=recipe.seed)})


def exported_language_model(export: Path, settings: StageSettings, tokenizer, vocabulary: torch.Tensor,
                            head: torch.Tensor | None = None) -> EncoderStage:
    """The exported encoder (float32) as the stage's language model again, for held-out numbers: its
    own input embedding is the output head when `head` is None (tied), else `head` [vocab, hidden]."""
    evaluator = EncoderStage(settings, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, vocabulary=vocabulary,
                             tied_embeddings=head is None)
    evaluator.lm.model = Qwen3Model.from_pretrained(export, torch_dtype=torch.float32)
    if head is None:  # the replaced model broke the tie: the head would still be the evaluator's random start
        evaluator.lm.lm_head.weight = evaluator.lm.model.embed_tokens.weight
    else:
        evaluator.lm.lm_head.weight.data.copy_(head)
    return evaluator


def caption_features(encoder: Qwen3Model, tokenizer, captions: list[str], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption features as inference computes them: diffusers' template, hidden layer -2."""
    ids, lengths = _tokenize([dit_prompt_text(c) for c in captions], tokenizer, max_tokens=512)
    features = frozen_encoder_features(encoder, ids.to(device), lengths.to(device))
    return features.to(torch.bfloat16), lengths


def _dit_data(recipe: WorldTrainingConfig, output_dir: Path, device: str) -> tuple[torch.Tensor, ...]:
    """Training latents and caption features from the exported VAE and encoder.

    Stored in `<output_dir>/dit/data.pt` with the exports' fingerprint, so a later piece
    on the same machine skips rendering and encoding the world again.
    """
    export = output_dir / "export"
    key = json.dumps({"recipe": [recipe.seed, recipe.train_scenes, recipe.captions_per_scene, IMAGE_SIZE],
                      "exports": [(p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                  for p in sorted(export.glob("vae/*.safetensors")) + sorted(export.glob("text_encoder/*.safetensors"))]})
    cache = output_dir / "dit" / "data.pt"
    if cache.is_file():
        stored = torch.load(cache, map_location="cpu")
        if stored["key"] == key:
            return stored["tensors"]
    tokenizer = load_bundled_tokenizer()
    vae = AutoencoderKL.from_pretrained(export / "vae", torch_dtype=torch.float32).to(device).eval()
    encoder = Qwen3Model.from_pretrained(export / "text_encoder", torch_dtype=torch.float32).to(device).eval()
    images, samples = build_world(recipe.seed, "train", recipe.train_scenes, IMAGE_SIZE, recipe.captions_per_scene)
    with torch.no_grad():
        latents = torch.cat([
            (vae.encode(images_to_tensor(images[s:s + 1024]).to(device)).latent_dist.mode() - vae.config.shift_factor)
            * vae.config.scaling_factor for s in range(0, len(images), 1024)])
    captions = [c for s in samples for c in s.captions]
    features, lengths = caption_features(encoder, tokenizer, captions + [""], device)
    tensors = (latents.cpu(), features[:-1].cpu(), lengths[:-1].cpu(), features[-1].cpu(), lengths[-1].cpu())
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "tensors": tensors}, cache)
    return tensors


def dit_tensors(recipe: WorldTrainingConfig, output_dir: Path, device: str) -> dict[str, torch.Tensor]:
    """The DiT stage's data (on the CPU): latents, caption features padded to a multiple of 32 rows,
    their lengths, and the empty prompt's features at that width (caption dropout)."""
    latents, features, lengths, empty_features, empty_length = _dit_data(recipe, output_dir, device)
    features = torch.nn.functional.pad(features, (0, 0, 0, (-features.shape[1]) % 32))
    empty = torch.zeros(features.shape[1], features.shape[2], dtype=features.dtype)
    empty[: int(empty_length)] = empty_features[: int(empty_length)].cpu()
    return {"latents": latents, "features": features, "lengths": lengths, "empty": empty,
            "empty_length": empty_length.clone()}


def caption_batch(t: dict[str, torch.Tensor], which: torch.Tensor,
                  dropout: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption features and lengths of rows `which`, cut to the batch's width; with `dropout`, that
    fraction (drawn per row) becomes the empty prompt. None draws nothing.

    The width is the longest caption rounded up to diffusers' multiple of 32: a handful of shapes,
    each compiled once, instead of a data-dependent shape inside the compiled forward.
    """
    lens = t["lengths"][which]
    width = min(t["features"].shape[1], (int(lens.max()) + 31) // 32 * 32)
    feats = t["features"][which, :width]
    if dropout is not None:
        drop = torch.rand(which.shape, device=which.device) < dropout
        feats = torch.where(drop[:, None, None], t["empty"][:width][None].expand_as(feats), feats)
        lens = torch.where(drop, t["empty_length"], lens)
    return feats, lens


def train_dit(recipe: WorldTrainingConfig, output_dir: Path, max_minutes: float, compile: bool,
              init_from_export: bool = False, static_caption_width: bool = True) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    export = output_dir / "export"
    tensors = dit_tensors(recipe, output_dir, device)
    per_scene = recipe.captions_per_scene
    dropout = recipe.caption_dropout

    def make_batch(t: dict[str, torch.Tensor], scene_index: torch.Tensor) -> dict[str, torch.Tensor]:
        which = scene_index * per_scene + torch.randint(0, per_scene, scene_index.shape, device=scene_index.device)
        feats, lens = caption_batch(t, which, dropout)
        return {"latents": t["latents"][scene_index], "cap_feats": feats, "cap_lengths": lens}

    data = _DeviceData(tensors, make_batch)
    module = DitStage(recipe.dit, compile=compile, ema_decay=recipe.ema_decay, static_caption_width=static_caption_width,
                      init=recipe.dit_init, frozen_timestep_embedder=recipe.dit_frozen_timestep_embedder,
                      high_noise_fraction=recipe.dit_high_noise_fraction)
    if init_from_export and (export / "transformer").is_dir() and not (output_dir / "dit" / "checkpoints" / "last.ckpt").is_file():
        # A piece on a fresh machine without the checkpoint: continue from the exported weights
        # (the optimizer state and the step count start again; the log says so).
        state = ZImageTransformer2DModel.from_pretrained(export / "transformer", torch_dtype=torch.float32).state_dict()
        module.transformer.load_state_dict(state)
        module.ema.module.load_state_dict(state)
        _log(output_dir, {"stage": "dit", "note": "started from the exported transformer, without optimizer state"})
    steps = _fit(module, data, TensorBatches(len(tensors["latents"]), recipe.dit.batch_size, recipe.seed), output_dir / "dit", recipe.dit.max_steps, max_minutes)
    transformer = module.ema.module.float()  # the moving average is what ships
    transformer.to(torch.bfloat16).save_pretrained(export / "transformer")
    loss = module.trainer.callback_metrics.get("dit/loss")  # absent when the piece resumed at max_steps
    _log(output_dir, {"stage": "dit", "steps": steps, "final_loss": None if loss is None else float(loss)})


def main(recipe: WorldTrainingConfig, stage: Stage, output_dir: str = "lightning_logs/world_model",
         max_minutes: float = 8.5, compile: bool = True, init_from_export: bool = False,
         static_caption_width: bool = True) -> None:
    """Train one stage of the embedded world model (see the module docstring).

    Args:
        recipe: the recipe (configs/world_model/train.yaml).
        stage: vae | encoder | dit (in this order: each reads the previous exports).
        output_dir: checkpoints, exports and log.jsonl.
        max_minutes: wall-clock budget of this piece; run again to resume.
        compile: torch.compile the DiT's training forward (CUDA only).
        init_from_export: DiT stage without a checkpoint: start from the exported transformer.
        static_caption_width: DiT stage: captions padded to the batch's multiple of 32 (no graph
            break under compile); false pads like diffusers, from the data.
    """
    L.seed_everything(recipe.seed, workers=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    if stage == "vae":
        train_vae(recipe, output, max_minutes)
    elif stage == "encoder":
        train_encoder(recipe, output, max_minutes)
    else:
        train_dit(recipe, output, max_minutes, compile, init_from_export, static_caption_width)


if __name__ == "__main__":
    CLI(main, as_positional=False)
