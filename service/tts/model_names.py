"""Which speech model names a request may give: OpenAI's are accepted as aliases of ChatTTS
(clients hard-code them), by rule rather than by list, so a new snapshot
(`gpt-4o-mini-tts-2025-12-15`) works the day it ships: a family (`tts-1`, `tts-1-hd`, any
`gpt-...-tts`, or `chattts`) and an optional `-YYYY-MM-DD` date."""

from __future__ import annotations

import re

MODEL_FAMILIES = ("chattts", "tts-1", "tts-1-hd", "gpt-<name>-tts")
MODEL_NAME = re.compile(r"(?:chattts|tts-1(?:-hd)?|gpt-[a-z0-9.]+(?:-[a-z0-9.]+)*?-tts)"
                        r"(?:-\d{4}-\d{2}-\d{2})?")


def unknown_model(model: str) -> str | None:
    """Why `model` is not served here, or None when it is."""
    if MODEL_NAME.fullmatch(model):
        return None
    return (f"model {model[:80]!r} is not served here; use one of "
            f"{', '.join(MODEL_FAMILIES)}, optionally with a -YYYY-MM-DD date (all are ChatTTS)")
