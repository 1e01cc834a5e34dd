"""Writing model packs: manifest.json in the format `service/runtime/packs.py` reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1  # must equal service.runtime.packs.FORMAT_VERSION (a test checks it)
MANIFEST = "manifest.json"


def graph_entry(
    file: str, inputs: list[str], outputs: list[str], *, batch_invariant: bool = True, **extra: Any
) -> dict[str, Any]:
    """One graph variant entry of the manifest."""
    return {
        "file": file,
        "inputs": inputs,
        "outputs": outputs,
        "batch_invariant": batch_invariant,
        **extra,
    }


def write_manifest(
    root: Path,
    *,
    kind: str,
    source: str,
    demo: bool,
    graphs: dict[str, dict[str, dict[str, Any]]],
    files: dict[str, str],
    constants: dict[str, Any],
    **extra: Any,
) -> Path:
    """Write `root/manifest.json`; keys are sorted so identical exports give identical files."""
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "source": source,
        "demo": demo,
        "graphs": graphs,
        "files": files,
        "constants": constants,
        **extra,
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    return path


def read_manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / MANIFEST).read_text(encoding="utf-8"))


def update_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Rewrite a manifest (quant/ adds variants this way)."""
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    return path
