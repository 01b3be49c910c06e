"""Refiner fine-tuning as a style adapter (`python -m llm_dit.cli fit --config configs/refiner_style_adapter.yaml`).

Train only Z-Image's context refiner, with the flow-matching objective in the
sampler's convention, as one of three adapter variants (LoRA on its linear
layers, full fine-tune, identity-initialized extra blocks); export the adapter
alone (safetensors + JSON spec with the base model's fingerprint); apply it in
`predict` through the `style_adapter` surgery spec at any scale.

    from llm_dit.training import AdapterConfig, TrainableAdapter, load_adapter
    from llm_dit.training.synthetic_style import write_synthetic_style  # python -m ... <folder>
"""

from llm_dit.training.adapter_files import AdapterSpec, load_adapter, read_spec, save_adapter
from llm_dit.training.adapters import TrainableAdapter, applied_blocks, export_checkpoint
from llm_dit.training.config import AdapterConfig, FlowMatchObjective
from llm_dit.training.fingerprint import base_fingerprints, check_adapter_base, portable_fingerprint
from llm_dit.training.objective import flow_matching_loss, noisy_latents, sample_sigmas, shift_sigmas, velocity_target
from llm_dit.training.style_adapter import StyleAdapter  # registers the style_adapter surgery variant
from llm_dit.training.validation import ValidationSettings, image_grid

__all__ = [
    "AdapterConfig",
    "AdapterSpec",
    "FlowMatchObjective",
    "StyleAdapter",
    "TrainableAdapter",
    "ValidationSettings",
    "applied_blocks",
    "base_fingerprints",
    "check_adapter_base",
    "export_checkpoint",
    "flow_matching_loss",
    "image_grid",
    "load_adapter",
    "noisy_latents",
    "portable_fingerprint",
    "read_spec",
    "sample_sigmas",
    "save_adapter",
    "shift_sigmas",
    "velocity_target",
]
