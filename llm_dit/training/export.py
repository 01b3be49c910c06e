"""`python -m llm_dit.training.export <run>/checkpoints/last.ckpt <folder>`: an adapter from a checkpoint.

A fit writes `<run>/adapter/` when it ends; a fit that was stopped early still
has its checkpoints, which hold the adapter's tensors and spec.
"""

from __future__ import annotations

import argparse

from llm_dit.training.adapter_files import usage
from llm_dit.training.adapters import export_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llm_dit.training.export", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a .ckpt written by `fit` with a model.fit.adapter")
    parser.add_argument("folder", help="where to write adapter.safetensors + adapter.json")
    options = parser.parse_args(argv)
    folder = export_checkpoint(options.checkpoint, options.folder)
    print(f"wrote {folder}/ (adapter.safetensors + adapter.json)\n{usage(str(folder))}")


if __name__ == "__main__":
    main()
