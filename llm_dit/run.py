"""The run folder: where a study's images, table, config and TensorBoard events live.

`<trainer.default_root_dir>/lightning_logs/<study name>/`, taken from the
TensorBoard logger the CLI configures, so re-running a study resumes in place.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L

PACKAGES = ("torch", "lightning", "diffusers", "transformers", "torchmetrics", "open_clip_torch", "llm-dit")


def run_dir(trainer: L.Trainer) -> Path:
    folder = Path(trainer.logger.log_dir if trainer.logger is not None else trainer.default_root_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def model_fingerprint(module: Any) -> str:
    """SHA-256 over parameter names, shapes and a strided sample of values: cheap, stable, weight-sensitive."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64].float().cpu()
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def write_run_record(trainer: L.Trainer, pl_module: Any, folder: Path) -> None:
    """study.json + environment.json beside the results (the resolved config is config.yaml)."""
    datamodule = getattr(trainer, "datamodule", None)
    study = getattr(datamodule, "study", None)
    if study is not None:
        (folder / "study.json").write_text(json.dumps(study.to_record(), indent=2, default=str))
    record = {
        "packages": package_versions(),
        "weights": getattr(pl_module.hparams, "weights", None),
        "transformer_fingerprint": model_fingerprint(pl_module.transformer) if hasattr(pl_module, "transformer") else None,
        "world_size": trainer.world_size,
    }
    (folder / "environment.json").write_text(json.dumps(record, indent=2, default=str))
