"""The embedded trained model (`--model.weights tiny`): where it lives and how to check it.

A Z-Image trained on the synthetic world (`llm_dit.world`), shipped in the package as
a diffusers-format folder (text_encoder/, transformer/, vae/, scheduler/; the
tokenizer is the bundled Qwen3 one). Its recipe is `configs/train_world.yaml`
(`llm_dit.world_model.train`); `SHA256SUMS` pins the exact files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
CHECKSUMS = EMBEDDED_DIR / "SHA256SUMS"


def file_checksums(folder: Path = EMBEDDED_DIR) -> dict[str, str]:
    """sha256 of every weight and config file under `folder`, by relative path."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in {".safetensors", ".json"})
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def recorded_checksums() -> dict[str, str]:
    """The checksums written when the weights were exported (`sha256sum` format)."""
    lines = CHECKSUMS.read_text().splitlines() if CHECKSUMS.is_file() else []
    return {name.strip(): digest for digest, name in (line.split(maxsplit=1) for line in lines if line.strip())}


def write_checksums(folder: Path = EMBEDDED_DIR) -> None:
    sums = file_checksums(folder)
    (folder / "SHA256SUMS").write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()))


def embedded_model_present() -> bool:
    return all((EMBEDDED_DIR / sub / "config.json").is_file() for sub in ("text_encoder", "transformer", "vae"))
