"""Model loading: the embedded tiny preset, diffusers folders, hub ids, single files."""

from llm_dit.models.components import ZImageComponents
from llm_dit.models.config import PRESETS, ZImageConfig, embedded_model_folder
from llm_dit.models.loading import (
    SingleFileWeights,
    check_weights_source,
    load_components,
    load_diffusers_folder,
    load_single_files,
    load_text_encoder,
)
from llm_dit.models.placement import (
    OutOfMemoryAdviceError,
    Placement,
    apply_placement,
    free_text_encoder,
    on_device,
    out_of_memory_advice,
)
from llm_dit.models.single_file import (
    MissingComponentError,
    PickleCheckpointError,
    ShapeMismatchError,
    WrongModelError,
    export_single_files,
    identify_checkpoint,
)
from llm_dit.models.tiny import build_tiny_components, bundled_tokenizer_dir, load_bundled_tokenizer

__all__ = [
    "PRESETS",
    "MissingComponentError",
    "OutOfMemoryAdviceError",
    "PickleCheckpointError",
    "Placement",
    "ShapeMismatchError",
    "SingleFileWeights",
    "WrongModelError",
    "ZImageComponents",
    "ZImageConfig",
    "apply_placement",
    "build_tiny_components",
    "bundled_tokenizer_dir",
    "check_weights_source",
    "embedded_model_folder",
    "export_single_files",
    "free_text_encoder",
    "identify_checkpoint",
    "load_bundled_tokenizer",
    "load_components",
    "load_diffusers_folder",
    "load_single_files",
    "load_text_encoder",
    "on_device",
    "out_of_memory_advice",
]
