"""The lab's HTTP API (FastAPI) and its page, over one LabSession.

Endpoints: POST /generate, POST /encode, GET /hook-points, /health, /memory, /presets, /history,
POST /save-condition, GET /files/<path> (images of the lab folder), GET / (the page). Bad input is
HTTP 422 with {"detail": "<the one-line message the CLI prints>"}; a failure that is not the
user's is HTTP 500 with one line, and the server goes on. Handlers are plain functions, so
FastAPI runs them in its thread pool; the session's lock makes requests queue on the one model.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fastapi import Body, FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

from llm_dit import errors
from llm_dit.lab.page import PAGE
from llm_dit.lab.presets import shipped_presets
from llm_dit.lab.session import CONDITIONS_FOLDER, LabError, LabSession

log = logging.getLogger("llm_dit.lab")
T = TypeVar("T")


def answer(call: Callable[[], T]) -> T:
    """Run a handler: user errors -> 422 with the CLI's one line, anything else -> 500 with one line."""
    try:
        return call()
    except HTTPException:
        raise
    except LabError as error:
        raise HTTPException(422, str(error)) from None
    except errors.INPUT_ERRORS as error:
        raise HTTPException(422, errors.user_message(error, started=False) or errors.one_line(str(error))) from None
    except Exception as error:
        log.exception("lab request failed")
        raise HTTPException(500, errors.one_line(str(error)) or type(error).__name__) from None


def create_app(session: LabSession, presets_folder: str | Path | None = None) -> FastAPI:
    """The FastAPI app over `session`; presets come from the shipped configs/ (or `presets_folder`)."""
    app = FastAPI(title="llm-dit lab", description="Try a prompt and a condition before committing a study.")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.post("/generate")
    def generate(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        """{prompt, seed, condition: {name, encoding, sampler, surgery, prompt_transform}, group?} ->
        {row (as in results.jsonl), image (path in the lab folder), png_base64, resumed}."""
        def run() -> dict[str, Any]:
            check_body(body, ("prompt", "seed", "condition", "group"))
            result = session.generate(body.get("prompt"), body.get("seed", 42), body.get("condition"), body.get("group"))
            return {"row": result["row"], "image": result["row"]["image"], "resumed": result["resumed"],
                    "png_base64": base64.b64encode(result["png"]).decode("ascii")}
        return answer(run)

    @app.post("/encode")
    def encode(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        """{prompt, condition?} -> tokens with segments (system/user/think/assistant/template) and feature statistics."""
        def run() -> dict[str, Any]:
            check_body(body, ("prompt", "condition"))
            return session.encode(body.get("prompt"), body.get("condition"))
        return answer(run)

    @app.get("/hook-points")
    def hook_points() -> list[dict[str, Any]]:
        return answer(session.hook_points)

    @app.get("/health")
    def health() -> dict[str, Any]:
        hparams = session.module.hparams
        return {"status": "ok", "weights": str(hparams.weights), "dtype": hparams.dtype,
                "embeddings": hparams.get("embeddings"), "lab_folder": str(session.folder),
                "study": session.study.name, "generated": len(session.history())}

    @app.get("/memory")
    def memory() -> dict[str, Any]:
        return answer(session.memory)

    @app.get("/presets")
    def presets() -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            saved = shipped_presets(session.folder / CONDITIONS_FOLDER)  # "save as condition" files of this lab
            return shipped_presets(presets_folder) + [{**p, "config": f"saved/{p['config']}"} for p in saved]
        return answer(run)

    @app.get("/history")
    def history() -> list[dict[str, Any]]:
        return answer(session.history)

    @app.post("/save-condition")
    def save_condition(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        """{condition, prompt?, seed?} -> writes conditions/<name>.yaml in the lab folder (a runnable study)."""
        def run() -> dict[str, Any]:
            check_body(body, ("condition", "prompt", "seed"))
            path = session.save_condition(body.get("condition"), body.get("prompt"), body.get("seed"))
            return {"path": str(path), "relative": str(path.relative_to(session.folder)),
                    "yaml": path.read_text(encoding="utf-8")}
        return answer(run)

    @app.get("/files/{path:path}")
    def files(path: str) -> FileResponse:
        """A file of the lab folder (images); nothing outside it is served."""
        target = (session.folder / path).resolve()
        if not target.is_relative_to(session.folder) or not target.is_file():
            raise HTTPException(404, f"no file {path!r} in the lab folder")
        return FileResponse(target)

    return app


def check_body(body: Any, keys: tuple[str, ...]) -> None:
    """A JSON object with only `keys` (a misspelt key would otherwise be silently ignored)."""
    if not isinstance(body, dict):
        raise LabError(f"the request body must be a JSON object with {', '.join(keys)}, got {type(body).__name__}")
    unknown = sorted(set(body) - set(keys))
    if unknown:
        raise LabError(f"unknown field(s) {', '.join(map(repr, unknown))} in the request; valid: {', '.join(keys)}")
