"""Saved embeddings: a study's caption features on disk, so encoding and generation can run apart.

`python -m llm_dit.cli encode --config <study>.yaml --out DIR` writes one safetensors file per
(prompt, encoding options) of the study (the negative prompt too where CFG is on), and
`predict --model.embeddings DIR` generates from them without building or loading the text
encoder (the DiT gets the whole accelerator: Qwen3-4B alone is ~8 GB in bfloat16).

Why not the run folder's `embeddings/<condition>/p<prompt>.safetensors` sidecars: they hold
summaries (the mean row, at most 512 user rows, segment statistics) for the analysis, keyed by
condition name. Generation needs every row, and one encoding serves every condition that shares
(prompt, encoding options), so a file here is named by a hash of exactly those settings, never by
a condition name. The storage conventions are the sidecars' (tensors + JSON in the safetensors
header, written atomically). Each file describes itself:

    tensors    embeddings [rows, dim] in the dtype the encoder produced (the DiT casts, as live),
               token_ids [tokens]
    metadata   "embedding": JSON {prompt, text (the templated string), tokens, segments (one label
               per token: system/user/think/assistant/template), row_segments, num_tokens, compressed,
               options (EncodingOptions), encoder {fingerprint, source, weights_fingerprint, dtype, padding}}

`embeddings.json` in DIR indexes the files and names the encoder. The encoder fingerprint is
computed from the encoder's files (config, safetensors headers, sampled bytes of the weights) and
tokenizer, without loading anything, so `predict` refuses features of another encoder before any
model loads.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llm_dit.encoding.encoder import EncodedPrompt
from llm_dit.encoding.options import EncodingOptions
from llm_dit.errors import UserError
from llm_dit.models.fingerprint import model_fingerprint
from llm_dit.models.loading import resolve_weights
from llm_dit.models.tiny import bundled_tokenizer_dir

FORMAT = "llm-dit saved embeddings v1"
MANIFEST = "embeddings.json"
METADATA_KEY = "embedding"
SAMPLED_CHUNKS = 64  # bytes sampled across each weights file: cheap on 8 GB, and changes with the weights
CHUNK_BYTES = 64
HEAD_BYTES = 1 << 16  # the safetensors header (names, shapes, dtypes, offsets) sits at the start
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")
ENCODE_HINT = "python -m llm_dit.cli encode --config <study>.yaml --out <folder>"

Key = tuple[str, EncodingOptions]


def embedding_key(prompt: str, options: EncodingOptions) -> str:
    """The file stem of (prompt, options): a hash of both, so renaming a condition changes nothing."""
    payload = json.dumps({"prompt": prompt, "options": options.to_dict()}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


# ----- which encoder: a fingerprint from files, nothing loaded --------------------------------


@dataclass(frozen=True)
class EncoderIdentity:
    """Which text encoder (and tokenizer) made the features.

    Attributes:
        fingerprint: hash of the encoder's files and tokenizer (see `encoder_identity`).
        source: where they came from, for messages.
    """

    fingerprint: str
    source: str


def encoder_identity(weights: Any, text_encoder_override: str | None = None, tiny_seed: int = 0,
                     allow_pickle: bool = False) -> EncoderIdentity:
    """The encoder that `--model.weights` (and `--model.load.text_encoder_override`) would load, without loading it.

    Files: config.json, each weights file's size, its first 64 KiB (the safetensors header: every
    tensor's name, shape, dtype and offset) and 64 bytes at 64 evenly spaced offsets; and the
    tokenizer's files. Presets (tiny, random) are named by preset and seed, as their weights are drawn
    from the seed. A hub id is named by its id (offline, nothing else can be read).
    """

    digest = hashlib.sha256()
    resolved = resolve_weights(weights, allow_pickle)
    tokenizer_folder = _tokenizer_folder(resolved)
    if text_encoder_override is not None:
        source = f"text encoder {text_encoder_override}"
        _hash_encoder_files(Path(text_encoder_override).expanduser(), digest, text_encoder_override)
    elif resolved.kind in ("tiny", "random"):
        source = f"preset {resolved.location} (seed {tiny_seed})"
        digest.update(f"preset:{resolved.location}:seed={tiny_seed}".encode())
    elif resolved.kind == "diffusers":
        source = f"{resolved.location}/text_encoder"
        _hash_encoder_files(Path(resolved.location) / "text_encoder", digest, source)
    elif resolved.kind == "single_files":
        path = resolved.location.files()["text_encoder"]
        source = str(path)
        _hash_encoder_files(Path(path), digest, source)
    else:
        source = f"hub {resolved.location}"
        digest.update(f"hub:{resolved.location}".encode())
    if tokenizer_folder is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_folder / name).is_file():
                digest.update(name.encode())
                digest.update((tokenizer_folder / name).read_bytes())
    return EncoderIdentity(digest.hexdigest()[:16], source)


def _tokenizer_folder(resolved: Any) -> Path | None:
    """The folder the tokenizer loads from (the bundled Qwen3 one unless the weights ship their own)."""

    if resolved.kind == "diffusers" and (Path(resolved.location) / "tokenizer").is_dir():
        return Path(resolved.location) / "tokenizer"
    if resolved.kind == "single_files" and resolved.location.tokenizer:
        return Path(resolved.location.tokenizer)
    if resolved.kind == "hub":
        return None
    return bundled_tokenizer_dir()


def _hash_encoder_files(path: Path, digest: Any, source: str) -> None:
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and (p.name == "config.json" or p.suffix in (
            ".safetensors", ".bin", ".pt", ".ckpt")))
    else:
        digest.update(f"hub:{source}".encode())  # an override given as a hub id
        return
    if not files:
        raise FileNotFoundError(f"{path} holds no text-encoder files (config.json, *.safetensors)")
    for file in files:
        _hash_file(file, digest)


def _hash_file(path: Path, digest: Any) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(HEAD_BYTES))
        for index in range(SAMPLED_CHUNKS):
            handle.seek(size * index // SAMPLED_CHUNKS)
            digest.update(handle.read(CHUNK_BYTES))


# ----- writing ----------------------------------------------------------------------------------


def encoder_record(identity: EncoderIdentity, text_encoder: torch.nn.Module, padding: str) -> dict[str, Any]:
    """What a saved file says about its encoder: identity, plus the loaded weights' own fingerprint."""
    return {
        "fingerprint": identity.fingerprint,
        "source": identity.source,
        "weights_fingerprint": model_fingerprint(text_encoder),
        "dtype": str(next(text_encoder.parameters()).dtype).removeprefix("torch."),
        "padding": padding,
    }


def save_embedding(folder: Path, prompt: str, options: EncodingOptions, encoded: EncodedPrompt,
                   encoder: dict[str, Any]) -> Path:
    """Write one (prompt, options) encoding as `<folder>/<key>.safetensors`, atomically."""
    path = Path(folder) / f"{embedding_key(prompt, options)}.safetensors"
    fields = {
        "prompt": prompt, "text": encoded.text, "tokens": list(encoded.tokens), "segments": list(encoded.segments),
        "row_segments": list(encoded.row_segments), "num_tokens": int(encoded.num_tokens),
        "compressed": bool(encoded.compressed), "options": options.to_dict(), "encoder": encoder,
    }
    tensors = {"embeddings": encoded.embeddings.detach().cpu().contiguous(),
               "token_ids": encoded.token_ids.detach().cpu().to(torch.int64).contiguous()}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(temporary), metadata={METADATA_KEY: json.dumps(fields, ensure_ascii=False), "format": FORMAT})
    os.replace(temporary, path)
    return path


def write_manifest(folder: Path, encoder: dict[str, Any], entries: dict[str, dict[str, Any]]) -> Path:
    """`embeddings.json`: the encoder and one entry per file (prompt, options, tokens, rows)."""
    path = Path(folder) / MANIFEST
    record = {"format": FORMAT, "encoder": encoder, "entries": dict(sorted(entries.items()))}
    temporary = path.with_name(f"{MANIFEST}.tmp{os.getpid()}")
    temporary.write_text(json.dumps(record, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(temporary, path)
    return path


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a saved-embeddings folder; one-line errors for a folder that is not one."""
    folder = Path(folder).expanduser()
    path = folder / MANIFEST
    if not folder.is_dir():
        raise FileNotFoundError(f"model.embeddings folder {str(folder)!r} does not exist; make it with `{ENCODE_HINT}`")
    if not path.is_file():
        raise FileNotFoundError(f"model.embeddings folder {str(folder)!r} has no {MANIFEST}: it is not a "
                                f"saved-embeddings folder; make one with `{ENCODE_HINT}`")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); encode the study again with `{ENCODE_HINT}`") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path} is not an llm-dit saved-embeddings manifest (format {FORMAT!r} expected); "
                         f"encode the study again with `{ENCODE_HINT}`")
    return record


def encoder_mismatch(saved: dict[str, Any], identity: EncoderIdentity, folder: str | os.PathLike) -> str | None:
    """The one-line refusal when `saved` (a manifest's encoder) is not `identity`, else None."""
    if saved.get("fingerprint") == identity.fingerprint:
        return None
    return (f"saved embeddings in {folder} were made by another text encoder ({saved.get('source')}, fingerprint "
            f"{saved.get('fingerprint')}) than this model's ({identity.source}, fingerprint {identity.fingerprint}); "
            "generate with the weights they were made with, or encode the study again with these weights: "
            f"{ENCODE_HINT}")


# ----- reading ----------------------------------------------------------------------------------


class SavedEmbeddings:
    """A saved-embeddings folder that answers `encode(prompts, options)` like ZImageTextEncoder.

    So the module's encoding cache, `predict_step` and the analysis callbacks use it unchanged.
    Open it with `SavedEmbeddings.open(folder, weights=...)`: that refuses another encoder's features.
    """

    def __init__(self, folder: str | os.PathLike, manifest: dict[str, Any]) -> None:
        self.folder = Path(folder).expanduser()
        self.manifest = manifest
        self.encoder = dict(manifest.get("encoder") or {})
        self.entries: dict[str, dict[str, Any]] = dict(manifest.get("entries") or {})
        self.options = EncodingOptions()

    @classmethod
    def open(cls, folder: str | os.PathLike, weights: Any, text_encoder_override: str | None = None,
             tiny_seed: int = 0, allow_pickle: bool = False) -> SavedEmbeddings:
        """Read the manifest and check the encoder against the weights' (no model loads)."""
        manifest = read_manifest(folder)
        identity = encoder_identity(weights, text_encoder_override, tiny_seed, allow_pickle)
        problem = encoder_mismatch(manifest.get("encoder") or {}, identity, folder)
        if problem:
            raise ValueError(problem)
        return cls(folder, manifest)

    @property
    def dim(self) -> int | None:
        """Width of the saved caption features (None for an empty folder)."""
        dims = {entry.get("dim") for entry in self.entries.values()}
        return next(iter(dims)) if len(dims) == 1 else None

    def has(self, prompt: str, options: EncodingOptions) -> bool:
        return embedding_key(prompt, options) in self.entries

    def check_covers(self, keys: Iterable[Key]) -> None:
        """Every (prompt, options) a study needs is saved; else one line naming the first missing one."""
        missing = [(prompt, options) for prompt, options in dict.fromkeys(keys) if not self.has(prompt, options)]
        if missing:
            prompt, options = missing[0]
            raise ValueError(self._missing_message(prompt, options, len(missing)))

    def _missing_message(self, prompt: str, options: EncodingOptions, count: int = 1) -> str:
        changed = {k: v for k, v in options.to_dict().items() if v != EncodingOptions().to_dict()[k]}
        more = f" ({count - 1} more missing)" if count > 1 else ""
        return (f"model.embeddings {str(self.folder)!r} has no saved embedding for prompt {prompt[:80]!r} with encoding "
                f"{changed or 'defaults'}{more}; encode this study into it first: {ENCODE_HINT}")

    def encode(self, prompts: Sequence[str] | str, options: EncodingOptions | None = None,
               **overrides: Any) -> list[EncodedPrompt]:
        """The saved EncodedPrompt of each prompt under `options` (ZImageTextEncoder.encode's contract)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        options = (options or self.options).with_overrides(overrides)
        return [self.load(prompt, options) for prompt in prompts]

    def load(self, prompt: str, options: EncodingOptions) -> EncodedPrompt:
        key = embedding_key(prompt, options)
        if key not in self.entries:
            raise UserError(self._missing_message(prompt, options))
        path = self.folder / f"{key}.safetensors"
        try:
            with safe_open(str(path), framework="pt") as handle:
                fields = json.loads((handle.metadata() or {})[METADATA_KEY])
                embeddings, token_ids = handle.get_tensor("embeddings"), handle.get_tensor("token_ids")
        except (OSError, KeyError, json.JSONDecodeError) as error:
            raise UserError(f"saved embedding {path} cannot be read ({error}); encode the study again: {ENCODE_HINT}") from None
        if fields.get("prompt") != prompt or fields.get("options") != options.to_dict():
            raise UserError(f"saved embedding {path} holds another prompt or options than its name says; "
                            f"encode the study again: {ENCODE_HINT}")
        return EncodedPrompt(
            embeddings=embeddings, token_ids=token_ids, tokens=list(fields["tokens"]),
            segments=list(fields["segments"]), text=str(fields["text"]), num_tokens=int(fields["num_tokens"]),
            compressed=bool(fields["compressed"]), row_segments=list(fields["row_segments"]),
        )

