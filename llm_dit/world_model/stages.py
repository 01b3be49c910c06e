"""The three training stages of the embedded world model, as LightningModules.

1. `VaeStage`: diffusers' AutoencoderKL (16 latent channels) on world images.
2. `EncoderStage`: transformers' Qwen3 as a causal language model on chat-templated
   captions (system turns, think blocks), so its hidden layers carry the caption.
3. `DitStage`: diffusers' ZImageTransformer2DModel with Z-Image's flow-matching
   objective on the frozen encoder's hidden layer -2 and the frozen VAE's latents.

Each stage keeps its (small) data on the device and draws batches from a seeded
generator; a stage stops at `max_steps` and resumes from Lightning's last checkpoint.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from diffusers import AutoencoderKL, ZImageTransformer2DModel
from torch.nn import functional as F
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

from llm_dit.training.objective import noisy_latents, shift_sigmas, velocity_target
from llm_dit.world_model.batched import batched_forward
from llm_dit.world_model.config import ENCODER_CONFIG, TRANSFORMER_CONFIG, VAE_CONFIG, StageSettings


def warmup_cosine(optimizer: torch.optim.Optimizer, settings: StageSettings) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        progress = min(1.0, (step - settings.warmup_steps) / max(1, settings.max_steps - settings.warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _Stage(L.LightningModule):
    def __init__(self, settings: StageSettings) -> None:
        super().__init__()
        self.settings = settings

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.settings.learning_rate, weight_decay=self.settings.weight_decay,
                                      betas=(0.9, self.settings.beta2))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup_cosine(optimizer, self.settings), "interval": "step"}}


class VaeStage(_Stage):
    """AutoencoderKL trained with pixel MSE + a small KL term on [-1, 1] images."""

    def __init__(self, settings: StageSettings, kl_weight: float = 1e-6) -> None:
        super().__init__(settings)
        self.vae = AutoencoderKL(**VAE_CONFIG)
        self.kl_weight = kl_weight

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        posterior = self.vae.encode(batch).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample
        mse = F.mse_loss(reconstruction.float(), batch.float())
        kl = posterior.kl().mean() / batch[0].numel()
        loss = mse + self.kl_weight * kl
        self.log_dict({"vae/mse": mse, "vae/kl": kl, "vae/psnr": psnr(mse)}, prog_bar=True)
        return loss


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for images in [-1, 1] (peak-to-peak 2)."""
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


class EncoderStage(_Stage):
    """Qwen3 as a language model on chat transcripts.

    The softmax runs over the tokens the world's transcripts use (`vocabulary`, a few
    hundred of Qwen3's 151,669): a full-vocabulary softmax would spend nearly all its
    work pushing down tokens that never occur, and its logits alone would not fit a
    batch of 256 transcripts in memory. Rows of unused tokens are never trained.

    `tied_embeddings=False` trains a separate output head (Qwen3Model, what ships, has none
    either way): with tied rows, words the user turn draws at random ("white" / "black"
    background) get the same softmax gradient and drift together (benchmarks/NOTES.md).
    `frozen_embeddings=True` keeps the input embedding at its random start (which separates every
    word about equally) and trains the layers and the head around it.
    """

    def __init__(self, settings: StageSettings, vocab_size: int, pad_token_id: int, vocabulary: torch.Tensor,
                 answer_start_token_id: int | None = None, answer_weight: float = 1.0,
                 tied_embeddings: bool = True, frozen_embeddings: bool = False, num_layers: int | None = None) -> None:
        super().__init__(settings)
        if frozen_embeddings and tied_embeddings:
            raise ValueError("frozen input embeddings need an untied output head (tied_embeddings=False)")
        shape = {**ENCODER_CONFIG, "tie_word_embeddings": tied_embeddings}
        if num_layers is not None:
            shape["num_hidden_layers"] = num_layers
        self.lm = Qwen3ForCausalLM(Qwen3Config(vocab_size=vocab_size, **shape))
        self.lm.model.embed_tokens.weight.requires_grad_(not frozen_embeddings)
        self.pad_token_id = pad_token_id
        # Tokens of the assistant's answer (after the last `answer_start_token_id`) weigh `answer_weight`:
        # restating the user's scene is the copy that makes the features carry every attribute.
        self.answer_start_token_id, self.answer_weight = answer_start_token_id, answer_weight
        self.register_buffer("vocabulary", vocabulary.sort().values)
        position = torch.full((vocab_size,), -100, dtype=torch.long)
        position[self.vocabulary] = torch.arange(len(vocabulary))
        self.register_buffer("position_in_vocabulary", position)

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) over the real tokens of right-padded `ids`."""
        mask = ids != self.pad_token_id
        # Right padding: columns past the batch's longest transcript are all padding (and a causal
        # model's real rows do not see later columns), so they are cut instead of computed.
        width = int(mask.sum(1).max())
        ids, mask = ids[:, :width], mask[:, :width]
        hidden = self.lm.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state[:, :-1]
        logits = (hidden @ self.lm.get_output_embeddings().weight[self.vocabulary].T).float()
        targets = self.position_in_vocabulary[ids[:, 1:]].masked_fill(~mask[:, 1:], -100)
        if self.answer_weight == 1.0 or self.answer_start_token_id is None:
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        per_token = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
        # position p of the targets predicts token p + 1: in the answer once a start marker came at or before p
        is_marker = ids[:, :-1] == self.answer_start_token_id
        markers_from_here = is_marker.long().flip(1).cumsum(1).flip(1)
        in_answer = (markers_from_here == 0) | ((markers_from_here == 1) & is_marker)
        weights = torch.where(in_answer, self.answer_weight, 1.0) * mask[:, 1:]
        return (per_token * weights).sum() / weights.sum()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log_dict({"encoder/loss": loss, "encoder/ppl": loss.exp()}, prog_bar=True)
        return loss


DitInit = Literal["diffusers", "adaln_zero"]


def adaln_zero_init(transformer: ZImageTransformer2DModel) -> None:
    """DiT's "adaLN-Zero" start (Peebles & Xie 2023): every modulated block starts as the identity
    and the output as zero.

    Zeroes each block's modulation (tanh gates 0, scales 1) and the final layer's modulation and
    projection; the architecture and the classes stay Z-Image's. Tried in the third session against
    the DiT's divergence: it did not steady it (the timestep embedding still ran away), so the recipe
    keeps diffusers' random start and freezes the timestep embedder instead (benchmarks/NOTES.md).
    """
    modulations = [block.adaLN_modulation for block in [*transformer.noise_refiner, *transformer.layers]]
    finals = list(transformer.all_final_layer.values())
    with torch.no_grad():
        for module in modulations + [final.adaLN_modulation for final in finals] + [final.linear for final in finals]:
            for parameter in module.parameters():
                parameter.zero_()


class DitStage(_Stage):
    """Z-Image's DiT on (latent, caption features) pairs; caption dropout for CFG.

    An exponential moving average of the weights (`ema`, part of the checkpoint) is
    what ships: at a few thousand steps it samples far more cleanly than the raw weights.
    """

    def __init__(self, settings: StageSettings, shift: float = 3.0, compile: bool = True, ema_decay: float = 0.999,
                 static_caption_width: bool = True, init: DitInit = "diffusers",
                 frozen_timestep_embedder: bool = False, high_noise_fraction: float = 0.0,
                 high_noise_floor: float = 0.98) -> None:
        super().__init__(settings)
        if not 0.0 <= high_noise_fraction <= 1.0 or not 0.0 < high_noise_floor < 1.0:
            raise ValueError("high_noise_fraction must be in [0, 1] and high_noise_floor in (0, 1)")
        # Shifted logit-normal noise levels put 0.26 % of samples above sigma 0.98, yet below it the
        # background (a constant over the whole latent) can be read off x_t itself, so the caption
        # never had to say it (fourth session, benchmarks/NOTES.md). This fraction of each batch
        # draws sigma uniformly from [high_noise_floor, 1] instead: where the first sampling step is.
        self.high_noise_fraction, self.high_noise_floor = high_noise_fraction, high_noise_floor
        self.transformer = ZImageTransformer2DModel(**TRANSFORMER_CONFIG)
        # diffusers starts the learned pad tokens at zero; a trained model's are not.
        for parameter in (self.transformer.x_pad_token, self.transformer.cap_pad_token):
            parameter.data.normal_(0.0, 0.02)
        if init == "adaln_zero":
            adaln_zero_init(self.transformer)
        if frozen_timestep_embedder:
            # The timestep embedding feeds every block's modulation and the final layer's scale. Trained,
            # its magnitude grew ~600x within 2,000 steps (the blocks profit from saturated gates and
            # scales, the post-norms hide it), and the final scale, which the output is linear in, ran
            # away with it (benchmarks/NOTES.md, third session). Frozen at its random start it stays a
            # fixed smooth feature map of t, and each consumer learns its own modulation from it.
            self.transformer.t_embedder.requires_grad_(False)
        self.ema = torch.optim.swa_utils.AveragedModel(
            self.transformer, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        self.ema.requires_grad_(False)
        self.shift = shift
        self.forward_fn = batched_forward
        self.compile = compile
        self.static_caption_width = static_caption_width

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.ema.update_parameters(self.transformer)

    def sample_sigmas(self, batch: int, device: torch.device | str) -> torch.Tensor:
        """Noise levels [B]: shifted logit-normal(0, 1), a `high_noise_fraction` of them uniform in [floor, 1]."""
        sigma = shift_sigmas(torch.sigmoid(torch.randn(batch, device=device)), self.shift)
        if self.high_noise_fraction > 0:
            high = torch.rand(batch, device=device) < self.high_noise_fraction
            band = self.high_noise_floor + (1 - self.high_noise_floor) * torch.rand(batch, device=device)
            sigma = torch.where(high, band, sigma)
        return sigma

    def configure_model(self) -> None:
        if self.compile and torch.cuda.is_available():
            self.forward_fn = torch.compile(batched_forward, dynamic=False)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x0 = batch["latents"]
        rope = self.transformer.rope_embedder
        if rope.freqs_cis is None or rope.freqs_cis[0].device != x0.device:
            rope(torch.zeros(1, 3, dtype=torch.long, device=x0.device))  # its lazy set-up would break the compiled graph
        noise = torch.randn_like(x0)
        sigma = self.sample_sigmas(x0.shape[0], x0.device)
        x_t = noisy_latents(x0, noise, sigma)
        width = batch["cap_feats"].shape[1] if self.static_caption_width else None
        prediction = self.forward_fn(self.transformer, x_t, 1 - sigma, batch["cap_feats"], batch["cap_lengths"],
                                     cap_len_max=width)
        loss = F.mse_loss(prediction.float(), velocity_target(x0, noise).float())
        self.log("dit/loss", loss, prog_bar=True)
        return loss


def frozen_encoder_features(encoder: Qwen3Model, ids: torch.Tensor, lengths: torch.Tensor, hidden_layer: int = -2,
                            batch_size: int = 1024) -> torch.Tensor:
    """Hidden layer `hidden_layer` of right-padded token ids [N, T] -> [N, T, D] (rows past a length are zero).

    Right padding with a causal encoder leaves every real row as it is unpadded
    (up to kernel rounding), which is how inference encodes one prompt.
    """
    outputs = []
    positions = torch.arange(ids.shape[1], device=ids.device)
    with torch.no_grad():
        for start in range(0, ids.shape[0], batch_size):
            chunk, chunk_lengths = ids[start:start + batch_size], lengths[start:start + batch_size]
            mask = positions[None] < chunk_lengths[:, None]
            hidden = encoder(input_ids=chunk, attention_mask=mask.long(), output_hidden_states=True).hidden_states[hidden_layer]
            outputs.append(hidden * mask[..., None])
    return torch.cat(outputs)


class TensorBatches(torch.utils.data.IterableDataset):
    """Endless seeded random batches of indices into device-resident tensors."""

    def __init__(self, size: int, batch_size: int, seed: int | list[int]) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed

    def __iter__(self):
        generator = np.random.default_rng(self.seed)
        while True:
            yield torch.from_numpy(generator.integers(0, self.size, self.batch_size))
