"""Response parts every JSON route shares."""

from __future__ import annotations

from typing import Any


def model_fields(info: dict[str, Any], model: str, outputs: str) -> dict[str, Any]:
    """Which model answered, at which precision and where; demo packs say so loudly."""
    body: dict[str, Any] = {
        "model": model, "source": info["source"], "demo": info["demo"],
        "precision": info["precision"], "provider": info["provider"],
    }
    if info["demo"]:
        body["warning"] = f"demo pack: random weights, the {outputs} mean nothing"
    return body
