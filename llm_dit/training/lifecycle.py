"""The fit lifecycle of ZImageModule: what its training hooks do (the module only delegates here).

Order within a fit (Lightning 2.6): datamodule.setup -> configure_model (loads
the weights, then `configure_training`: adapter swapped in, caption/latent cache
built, text encoder freed: all before the strategy wraps the module for DDP and
moves it) -> checkpoint restore (adapter tensors only) -> training/validation
steps -> `export_adapter` at fit end into `<run>/adapter/`.
"""

from __future__ import annotations

from typing import Any

import torch

from llm_dit.encoding.options import EncodingOptions
from llm_dit.models.placement import free_text_encoder, release_cached_memory
from llm_dit.run_folder import run_dir
from llm_dit.training.adapters import TrainableAdapter, freeze
from llm_dit.training.config import AdapterConfig, FlowMatchObjective
from llm_dit.training.objective import draw_noise, flow_matching_loss, validation_noise
from llm_dit.training.validation import ValidationSettings, log_grid, sample_grid

ADAPTER_FOLDER = "adapter"
TRAINING_STAGES = ("fit", "validate")


def init_training(module: Any, fit: Any) -> None:
    """Validate the training options (module.fit_settings; config time: no model yet) and keep them on the module."""
    module.adapter_config = AdapterConfig.coerce(fit.adapter)
    module.objective = FlowMatchObjective.coerce(fit.objective)
    module.validation_settings = ValidationSettings(
        list(fit.validation_prompts or []), list(fit.validation_seeds or [0]), dict(fit.validation_sampler or {})
    )
    module.trainable_adapter = None
    module.training_info = {}
    if module.adapter_config is not None:
        module.strict_loading = False  # checkpoints hold the adapter's tensors only
    # Plain data in hparams: checkpoints then load with weights_only and hparams.yaml stays readable.
    module.hparams["fit"]["adapter"] = None if module.adapter_config is None else module.adapter_config.to_dict()
    module.hparams["fit"]["objective"] = vars(module.objective).copy()


def configure_training(module: Any) -> None:
    """For fit/validate with an adapter: swap it in, freeze the rest, build the data cache, free the encoder."""
    trainer = getattr(module, "_trainer", None)
    if module.adapter_config is None or module.trainable_adapter is not None or trainer is None:
        return
    if trainer.state.fn not in TRAINING_STAGES:
        return
    module.trainable_adapter = TrainableAdapter(module.transformer, module.adapter_config)
    freeze(module.text_encoder)
    freeze(module.vae)
    if module.fit_settings.gradient_checkpointing:
        module.transformer.enable_gradient_checkpointing()
    _prepare_data(module, trainer)


def _prepare_data(module: Any, trainer: Any) -> None:
    """Encode what training needs once, on the training device, then drop the text encoder."""
    datamodule = trainer.datamodule
    options = getattr(datamodule, "encoding_options", None) or EncodingOptions()
    device = trainer.strategy.root_device
    module.text_encoder.to(device)
    module.vae.to(device)
    if module.validation_settings.prompts:
        module.encode(list(module.validation_settings.prompts), options)  # kept in module.embedding_cache
    if hasattr(datamodule, "prepare_cache"):
        datamodule.prepare_cache(module.encoder, module.vae)
    module.training_info = {
        "weights": module.hparams.get("weights"),
        "encoding": options.to_dict(),
        "resolution": getattr(datamodule, "resolution", None),
    }
    release(module, "text_encoder")
    if not module.validation_settings.prompts:
        release(module, "vae")


def release(module: Any, name: str) -> None:
    """Free a component no longer needed (weights to the meta device) and take it out of the
    module tree, so neither DDP nor Lightning's teardown (`module.cpu()`) touches it."""
    component = module._modules.pop(name, None)
    if component is None:
        return
    if name == "text_encoder":
        free_text_encoder(module.components)
    else:
        component.to("meta")
        release_cached_memory()


def training_step(module: Any, batch: dict[str, Any]) -> torch.Tensor:
    x0 = batch["latents"].float()
    noise, sigma = draw_noise(module.objective, x0, batch.get("index"))
    loss = flow_matching_loss(module.transformer, x0, noise, sigma, _captions(module, batch))
    module.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=x0.shape[0])
    return loss


def validation_step(module: Any, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
    """Loss at fixed noise and sigmas (comparable across steps); the sample grid on the first batch."""
    x0 = batch["latents"].float()
    noise, sigma = validation_noise(batch["index"], x0)
    loss = flow_matching_loss(module.transformer, x0, noise, sigma, _captions(module, batch))
    module.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=x0.shape[0])
    if batch_idx == 0 and module.validation_settings.prompts and module.trainer.is_global_zero:
        options = EncodingOptions().with_overrides(module.training_info.get("encoding", {}))
        grid = sample_grid(module, module.validation_settings, options, module.training_info.get("resolution"))
        log_grid(module, grid)
    return loss


def _captions(module: Any, batch: dict[str, Any]) -> list[torch.Tensor]:
    return [c.to(module.transformer.dtype) for c in batch["captions"]]


def configure_optimizers(module: Any) -> dict[str, Any]:
    """AdamW over the adapter's parameters only, with optional linear warmup per optimizer step."""
    if module.trainable_adapter is None:
        raise ValueError("fit trains a context-refiner style adapter: set model.fit.adapter, e.g. {variant: lora, rank: 16}")
    config = module.adapter_config
    optimizer = torch.optim.AdamW(module.trainable_adapter.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    if not config.warmup_steps:
        return {"optimizer": optimizer}
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / config.warmup_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}


def adapter_state_keys(module: Any) -> set[str]:
    """Names in module.state_dict() of the adapter's parameters."""
    own = {id(p) for p in module.trainable_adapter.parameters()}
    return {name for name, p in module.named_parameters() if id(p) in own}


def on_save_checkpoint(module: Any, checkpoint: dict[str, Any]) -> None:
    """Keep only the adapter in checkpoints: the frozen model would be ~20 GB per file for nothing."""
    if module.trainable_adapter is None:
        return
    keep = adapter_state_keys(module)
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
    checkpoint["style_adapter"] = module.trainable_adapter.spec(module.training_info).to_dict()


def on_load_checkpoint(module: Any, checkpoint: dict[str, Any]) -> None:
    """Loading is non-strict (the frozen weights come from `weights`), so check the adapter is all there."""
    if module.trainable_adapter is None:
        return
    missing = sorted(adapter_state_keys(module) - set(checkpoint.get("state_dict", {})))
    if missing:
        raise ValueError(
            f"the checkpoint lacks {len(missing)} adapter tensor(s), e.g. {missing[0]}: it was saved with another "
            f"model.fit.adapter configuration than {module.adapter_config.to_dict()}"
        )


def export_adapter(module: Any) -> None:
    """At fit end: `<run>/adapter/` (rank 0), for `{variant: style_adapter, path: ...}` in predict."""
    if module.trainable_adapter is None or not module.trainer.is_global_zero:
        return
    info = {**module.training_info, "global_step": module.global_step, "objective": vars(module.objective).copy()}
    folder = module.trainable_adapter.export(run_dir(module.trainer) / ADAPTER_FOLDER, info)
    module.exported_adapter = folder
