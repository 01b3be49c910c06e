"""Model loading: the embedded tiny preset, diffusers folders, hub ids, single files."""

from llm_dit.models.components import ZImageComponents
from llm_dit.models.tiny import build_tiny_components, bundled_tokenizer_dir, load_bundled_tokenizer

__all__ = ["ZImageComponents", "build_tiny_components", "bundled_tokenizer_dir", "load_bundled_tokenizer"]
