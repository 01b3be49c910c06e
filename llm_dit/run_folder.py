"""The run folder: where a study's images, table, config and TensorBoard events live.

`<trainer.default_root_dir>/lightning_logs/<study name>/`, taken from the
TensorBoard logger the CLI configures, so re-running a study resumes in place.
One run at a time owns a folder: `RunFolderLock` (an advisory file lock, released
by the OS even when the process is killed).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import socket
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L
from llm_dit.models.fingerprint import model_fingerprint  # noqa: F401  (re-exported: runs record it)

LOCK_FILE = "run.lock"


class RunFolderError(ValueError):
    """A problem with the run folder found before the first image (a user error, shown in one line).

    `before_first_image` tells the CLI to print it as one line even though the trainer has started."""

    before_first_image = True


class RunFolderLock:
    """Exclusive lock on a run folder, so two runs never generate the same items twice.

    Args:
        folder: the run folder.
        wait: block until the other run ends instead of stopping with an error.
    """

    def __init__(self, folder: Path, wait: bool = False) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.wait = wait
        self._handle = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(self.path)
            if not self.wait:
                handle.close()
                raise RunFolderError(
                    f"run folder {self.path.parent} is in use by another run ({holder}); wait for it to end, "
                    "use another run folder, or pass --data.init_args.wait_for_lock true to wait"
                ) from None
            print(f"waiting for run folder {self.path.parent}: in use by another run ({holder})", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None


def _read_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, json.JSONDecodeError):
        return "holder unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


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


def components_fingerprint(pl_module: Any) -> str | None:
    """Fingerprint of every part that shapes an image: text encoder, transformer and VAE.

    Generating from saved embeddings, the text encoder is never loaded: its part is the
    fingerprint the embeddings recorded of the encoder that made them (the same function of
    the same weights), so a run folder resumes whether its prompts are encoded live or read.
    """
    saved = getattr(pl_module, "saved_embeddings", None)
    fingerprints = []
    for name in ("text_encoder", "transformer", "vae"):
        part = getattr(pl_module, name, None)
        if part is not None:
            fingerprints.append(model_fingerprint(part))
        elif name == "text_encoder" and saved is not None and saved.encoder.get("weights_fingerprint"):
            fingerprints.append(saved.encoder["weights_fingerprint"])
    if not fingerprints:
        return None
    return hashlib.sha256("".join(fingerprints).encode()).hexdigest()[:16]


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
