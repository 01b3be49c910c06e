"""Human preference: a blind A/B page per run, and reading its votes back.

``export_ab_page`` pairs the control with each other condition on the same
(prompt, seed), samples ``pairs_per_condition`` pairs per condition with a
seeded RNG, shuffles all pairs and puts the control left or right at random.
The page shows no condition names; blindness is at the interface level (the
image file paths in the page source name the condition; use
``embed_images=True`` for a page that hides them and travels as one file).

Images smaller than ``MIN_SIDE`` pixels (the tiny model's 64 px) are shown
upscaled by a whole factor with nearest-neighbour sampling, so pixels stay
pixels: copies under ``ab_images/`` beside the page (or inline with
``embed_images``). A run on random weights (``provenance.weights_are_random``)
gets a notice at the top of the page.

``read_votes`` reads one votes file or every ``votes*.json`` in a folder
(several raters), keeps the last vote per (rater, page, pair) and returns win
rates per condition against the control with a 95% Wilson interval; a tie
counts as half a win.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from llm_dit.report.ab_template import TEMPLATE
from llm_dit.report.provenance import RANDOM_WEIGHTS_NOTICE, weights_are_random
from llm_dit.results.run_data import load_run
from llm_dit.results.stats import wilson_interval

FORMAT = "llm-dit-ab-votes/1"
MIN_SIDE = 256  # the shortest side a rater sees, in image pixels
UPSCALED = "ab_images"


@dataclass(frozen=True)
class WinRate:
    """Preference for ``condition`` over ``control`` from blind pairs."""

    condition: str
    control: str
    wins: int
    losses: int
    ties: int

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def rate(self) -> float:
        """(wins + ties / 2) / votes: 0.5 = no preference."""
        return (self.wins + 0.5 * self.ties) / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.wins + 0.5 * self.ties, self.n)

    def describe(self) -> str:
        low, high = self.interval
        return (
            f"{self.condition} preferred over {self.control} in {self.rate:.0%} of {self.n} blind votes "
            f"(95% CI {low:.0%}-{high:.0%}; {self.wins} wins, {self.losses} losses, {self.ties} ties)"
        )


def export_ab_page(
    run_dir: str | Path,
    pairs_per_condition: int = 20,
    seed: int = 0,
    conditions: list[str] | None = None,
    output: str | Path | None = None,
    embed_images: bool = False,
) -> Path:
    """Write the blind A/B page (default ``<run_dir>/ab_page.html``) and return its path."""
    run = load_run(run_dir)
    control = run.control
    if control is None:
        raise ValueError(f"{run_dir}: no conditions in results.jsonl, nothing to compare")
    output = Path(output) if output else Path(run_dir) / "ab_page.html"
    rng = random.Random(seed)
    control_rows = {(r["prompt_index"], r["seed"]): r for r in run.rows_of(control)}
    targets = [c for c in (conditions or run.conditions) if c != control]
    unknown = sorted(set(targets) - set(run.conditions))
    if unknown:
        raise ValueError(f"unknown conditions {unknown}; this run has {run.conditions}")
    pairs = []
    for condition in targets:
        rows = {(r["prompt_index"], r["seed"]): r for r in run.rows_of(condition)}
        keys = sorted(k for k in rows if k in control_rows)
        for key in rng.sample(keys, min(pairs_per_condition, len(keys))):
            control_side = rng.choice(["left", "right"])
            sides = {control_side: control_rows[key], ("right" if control_side == "left" else "left"): rows[key]}
            pairs.append(
                {
                    "condition": condition,
                    "control": control,
                    "prompt_index": key[0],
                    "seed": key[1],
                    "prompt": rows[key].get("original_prompt") or rows[key].get("prompt", ""),
                    "control_side": control_side,
                    **{side: _image(run.run_dir, row, output, embed_images) for side, row in sides.items()},
                }
            )
    rng.shuffle(pairs)
    for index, pair in enumerate(pairs):
        pair["pair_id"] = f"{index:04d}"
    page_id = f"{run.name}-s{seed}"
    data = {"format": FORMAT, "page_id": page_id, "run": run.name, "seed": seed, "pairs": pairs}
    payload = json.dumps(data).replace("</", "<\\/")  # never close the <script> early
    notice = ""
    if weights_are_random(run.environment.get("weights")):
        notice = f'<div id="provenance">{_escape(RANDOM_WEIGHTS_NOTICE)}</div>\n'
    html = TEMPLATE.replace("__TITLE__", _escape(run.name)).replace("__NOTICE__", notice).replace("__DATA__", payload)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(html, encoding="utf-8")
    return output


def _image(run_dir: Path, row: dict[str, Any], page: Path, embed: bool) -> dict[str, str]:
    path = run_dir / row["image"]
    upscaled = _upscaled(path)
    if embed:
        data = path.read_bytes() if upscaled is None else upscaled
        src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    else:
        if upscaled is not None:
            copy = page.parent / UPSCALED / row["image"]
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(upscaled)
            path = copy
        src = Path(os.path.relpath(path, page.parent)).as_posix()
    return {"item_id": row["item_id"], "src": src}


def _upscaled(path: Path, min_side: int = MIN_SIDE) -> bytes | None:
    """PNG bytes of the image enlarged by the smallest whole factor reaching ``min_side`` (nearest
    neighbour); None when it is already large enough."""
    with Image.open(path) as image:
        short = min(image.size)
        if short >= min_side:
            return None
        factor = math.ceil(min_side / short)
        big = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    return buffer.getvalue()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def vote_files(path: str | Path) -> list[Path]:
    """``path`` itself, or the ``votes*.json`` files in it (a run dir or a folder of downloads)."""
    path = Path(path)
    return [path] if path.is_file() else sorted(path.glob("votes*.json"))


def read_votes(path: str | Path) -> dict[str, WinRate]:
    """Per-condition win rates against the control from one votes file or a folder of them."""
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for file in vote_files(path):
        document = json.loads(file.read_text(encoding="utf-8"))
        if document.get("format") != FORMAT:
            raise ValueError(
                f"{file} is not an llm-dit votes file (format {document.get('format')!r}, expected {FORMAT!r})"
            )
        for vote in document.get("votes", []):
            key = (str(document.get("rater")), str(document.get("page_id")), str(vote["pair_id"]))
            if key not in latest or str(vote.get("time", "")) >= str(latest[key].get("time", "")):
                latest[key] = vote
    counts: dict[tuple[str, str], list[int]] = {}
    for vote in latest.values():
        winner = _winner(vote)
        tally = counts.setdefault((vote["condition"], vote["control"]), [0, 0, 0])
        tally[{"condition": 0, "control": 1, "tie": 2}[winner]] += 1
    return {cond: WinRate(cond, control, *tally) for (cond, control), tally in sorted(counts.items())}


def _winner(vote: dict[str, Any]) -> str:
    """Recompute the winner from the choice and the control's side (the file's own field is not trusted)."""
    choice, control_side = vote["choice"], vote["control_side"]
    if choice not in ("left", "right", "tie") or control_side not in ("left", "right"):
        raise ValueError(f"bad vote {vote!r}: choice must be left/right/tie and control_side left/right")
    if choice == "tie":
        return "tie"
    return "control" if choice == control_side else "condition"
