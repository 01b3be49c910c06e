"""`python -m llm_dit.cli encode --config <study>.yaml --out DIR`: save a study's prompt embeddings.

The same config (and `--model.*`, `--data.*` options) as `predict`; only the text encoder runs.
Every (prompt, encoding options) the study's items use (negative prompts where CFG is on) is
encoded with the module's own encode path, so `predict --model.embeddings DIR` feeds the DiT the
very tensors live encoding would (llm_dit.encoding.saved describes the files). Encoding into a
folder that already holds another study's embeddings adds to it, if the encoder is the same.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from llm_dit.encoding.cache import to_cpu
from llm_dit.encoding.saved import (
    MANIFEST, embedding_key, encoder_identity, encoder_mismatch, encoder_record, read_manifest, save_embedding,
    write_manifest,
)
from llm_dit.module import ZImageModule

PROG = "python -m llm_dit.cli encode"


class EncodeCLI(LightningCLI):
    """Parses a predict config plus `--out`; builds the module and data module, no trainer."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--out", required=True, help="folder to write the embeddings into (created)")
        parser.add_argument("--device", default="auto", help="where the text encoder runs: auto | cpu | cuda[:N]")

    def instantiate_trainer(self, **kwargs: Any) -> None:
        return None  # encoding needs no trainer (and must not create a run folder)


def encode_main(args: list[str]) -> Path | None:
    """Parse `args` (everything after `encode`), encode, print where the files went."""
    if any(a in ("-h", "--help") for a in args) or not args:
        args = args or ["--help"]
    cli = EncodeCLI(
        ZImageModule, LightningDataModule, subclass_mode_data=True, run=False, args=args,
        parser_kwargs={"prog": PROG, "exit_on_error": False,
                       "description": "Save every (prompt, encoding options) of a study as safetensors."},
        save_config_callback=None,
    )
    module, datamodule = cli.model, cli.datamodule
    items = getattr(datamodule, "items", None)
    if items is None:
        raise ValueError("encode needs a study: give a predict config whose data is llm_dit.data.StudyDataModule")
    if module.saved_embeddings is not None:
        raise ValueError("encode runs the text encoder: leave --model.embeddings out")
    out = Path(cli.config["out"]).expanduser()
    batches = datamodule.batches() if callable(getattr(datamodule, "batches", None)) else [[item] for item in items]
    written, total = encode_batches(module, batches, out, cli.config["device"])
    config = _config_path(args)
    print(f"saved {total} embedding(s) ({written} new) for {len(items)} item(s) in {out}/ ({MANIFEST} indexes them)\n"
          f"next: python -m llm_dit.cli predict --config {config} --model.embeddings {out}", file=sys.stderr)
    return out


def encode_batches(module: ZImageModule, batches: list[list[Any]], out: Path, device: str = "auto") -> tuple[int, int]:
    """Encode every (prompt, options) of the study's `batches` into `out`; returns (files written, entries in the folder).

    The encoder is called as predict calls it (ZImageModule.generate -> encode): per batch, once for
    the prompts not encoded before, once for the negative prompt under CFG. So even where a prompt's
    features depend on its batch mates (encoder_padding "diffusers" with a long-prompt mode, which
    pads a batch to its longest prompt), the saved features are the ones predict would compute.
    """
    load = module.load_settings
    identity = encoder_identity(module.hparams.weights, load.text_encoder_override, load.tiny_seed, load.allow_pickle)
    existing = read_manifest(out) if (out / MANIFEST).is_file() else None
    if existing is not None:
        problem = encoder_mismatch(existing.get("encoder") or {}, identity, out)
        if problem:
            raise ValueError(problem.replace("generate with the weights they were made with, or encode the study "
                                             "again with these weights", "encode into another folder"))
    module.configure_model()
    module.text_encoder.to(_device(device))
    record = encoder_record(identity, module.text_encoder, module.predict_settings.encoder_padding)
    if existing is not None:
        before = existing["encoder"]
        if (before.get("dtype"), before.get("padding")) != (record["dtype"], record["padding"]):
            raise ValueError(f"{out} holds embeddings encoded in {before.get('dtype')} with padding "
                             f"{before.get('padding')!r}, this run encodes in {record['dtype']} with padding "
                             f"{record['padding']!r}; encode into another folder (--out)")
    entries = dict(existing["entries"]) if existing else {}
    written = 0
    for batch in batches:
        options = batch[0].encoding
        calls = [[item.prompt for item in batch]]
        if batch[0].sampler.uses_cfg:
            calls.append([batch[0].sampler.negative_prompt])
        for prompts in calls:
            missing = [p for p in dict.fromkeys(prompts) if embedding_key(p, options) not in entries]
            if not missing:
                continue
            for prompt, encoded in zip(missing, module.encoder.encode(missing, options)):
                path = save_embedding(out, prompt, options, to_cpu(encoded), record)
                entries[path.stem] = {
                    "file": path.name, "prompt": prompt, "options": options.to_dict(),
                    "num_tokens": int(encoded.num_tokens), "rows": int(encoded.embeddings.shape[0]),
                    "dim": int(encoded.embeddings.shape[1]),
                }
                written += 1
    write_manifest(out, record, entries)
    return written, len(entries)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _config_path(args: list[str]) -> str:
    for index, arg in enumerate(args):
        if arg == "--config" and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return "<study>.yaml"
