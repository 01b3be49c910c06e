"""`python -m llm_dit.cli serve`: the lab server on one loaded model (FastAPI + uvicorn).

Options: every `--model.*` of predict (`--model.weights /models/Z-Image-Turbo --model.dtype bfloat16`,
`--model.embeddings DIR`, ...), `--folder` (the lab run folder, default lightning_logs/lab),
`--host` (default 127.0.0.1: only this machine), `--port`, `--encoding` / `--sampler` (the lab's
baseline, as a study's), `--config` (a YAML of the same keys, or a study config: its model section
and its study's baseline are used, the rest ignored). Binding to another host exposes
the model to that network: there is no authentication.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from jsonargparse import ActionConfigFile, ArgumentParser

from llm_dit.module import ZImageModule
from llm_dit import quiet
from llm_dit.lab.app import create_app
from llm_dit.lab.session import LabSession

PROG = "python -m llm_dit.cli serve"
DEFAULT_FOLDER = "lightning_logs/lab"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, exit_on_error=False,
                            description="The interactive lab: a web page and REST API over one loaded model.")
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML with any of these options")
    parser.add_class_arguments(ZImageModule, "model", instantiate=True)
    parser.add_argument("--folder", default=DEFAULT_FOLDER, help="the lab run folder (an ordinary study folder)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--encoding", type=dict, default={}, help="the lab's baseline encoding options")
    parser.add_argument("--sampler", type=dict, default={}, help="the lab's baseline sampler settings, e.g. {height: 512, width: 512}")
    parser.add_argument("--accelerator", default="auto", help="auto | cpu | gpu")
    parser.add_argument("--data", type=Optional[dict], default=None,
                        help="a study config's data section: without --encoding/--sampler, its study's baseline is the lab's")
    parser.add_argument("--trainer", type=Optional[dict], default=None, help="ignored (so a study config can be given)")
    parser.add_argument("--presets", default=None, help="folder of study YAMLs whose conditions are presets (default: configs/)")
    return parser


def build_lab(args: list[str]) -> tuple[Any, Any]:
    """(FastAPI app, parsed options): parse, build the module, load the model into a LabSession."""
    parser = build_parser()
    options = parser.parse_args(args)
    init = parser.instantiate_classes(options)
    encoding, sampler = options.encoding, options.sampler
    study = ((options.data or {}).get("init_args") or {}).get("study") or {}
    if not encoding and not sampler and isinstance(study, dict):
        encoding, sampler = dict(study.get("encoding") or {}), dict(study.get("sampler") or {})
    session = LabSession(init.model, Path(options.folder), encoding, sampler, options.accelerator)
    return create_app(session, options.presets), options


def serve_main(args: list[str]) -> None:
    import uvicorn

    quiet.install()
    app, options = build_lab(args)
    print(f"lab: http://{options.host}:{options.port}/  (folder {options.folder}; Ctrl-C stops)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning")


class BackgroundServer:
    """uvicorn serving `app` on a free local port in a thread, as a context manager (tests, screenshots)."""

    def __init__(self, app: Any, host: str = "127.0.0.1") -> None:
        import uvicorn

        with socket.socket() as probe:
            probe.bind((host, 0))
            self.port = probe.getsockname()[1]
        self.host = host
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the lab server did not start on {self.url}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
