"""What a recorded text setting is about: thinking content and system prompts.

Q2.2-Q2.4 ask about *kinds* of thinking ("quality-focused", "style",
"irrelevant") and Q7.1-Q7.5 about *kinds* of system prompt ("a photographer",
"an artist", "contradictory"). The kind is in the recorded text, not in the
condition's name, so it is read from the text with these word lists (matched
at word starts, case-insensitive). Extend the lists here; a text that matches
several topics is "mixed" and answers none of the single-topic questions.
"""

from __future__ import annotations

import re

THINKING_TOPICS: dict[str, tuple[str, ...]] = {
    "quality": (
        "quality", "detail", "sharp", "focus", "anatomy", "resolution", "crisp", "blur", "artifact",
        "distortion", "noise", "noisy", "clean",
    ),
    "style": (
        "style", "paint", "brushstroke", "watercolo", "sketch", "illustrat", "anime", "oil", "pencil",
        "impressionis", "cartoon", "charcoal",
    ),
    "composition": (
        "composition", "rule of thirds", "depth of field", "balanced", "framing", "symmetr", "perspective",
        "foreground", "background", "layout",
    ),
}

SYSTEM_ROLES: dict[str, tuple[str, ...]] = {
    "photographer": ("photograph", "photo", "camera", "cinematograph"),
    "artist": ("artist", "art ", "painter", "illustrator", "digital art"),
}

#: Phrases that ask for worse images (Q7.5).
CONTRADICTORY: tuple[str, ...] = (
    "low quality", "low-quality", "bad quality", "worst quality", "ugly", "blurry", "poorly", "poor quality",
    "badly", "distorted images",
)


def _matches(text: str, words: tuple[str, ...]) -> bool:
    lowered = " ".join(text.lower().split()) + " "
    return any(re.search(r"(?<![a-z])" + re.escape(word), lowered) for word in words)


def thinking_topics(text: str) -> set[str]:
    """The topics a thinking content is about (empty set: about none of them, e.g. the weather)."""
    return {topic for topic, words in THINKING_TOPICS.items() if _matches(text, words)}


def system_roles(text: str) -> set[str]:
    """The roles a system prompt gives the encoder ("photographer", "artist")."""
    return {role for role, words in SYSTEM_ROLES.items() if _matches(text, words)}


def is_contradictory(text: str) -> bool:
    """The system prompt asks for bad images."""
    return _matches(text, CONTRADICTORY)
