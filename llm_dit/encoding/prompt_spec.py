"""PromptSpec: one prompt as a study lists it and the prompt generators make it.

It lives in the model layer, below the study, so that prompt generators
(llm_dit.encoding.long_prompt_generator) can build prompts without importing the study.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PromptSpec:
    """One prompt; `type` (portrait / landscape / abstract ...) groups prompts in reports."""

    text: str
    type: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
