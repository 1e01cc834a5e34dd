"""Model packs: the contract between `export/` and the service.

A pack is a folder holding ONNX graphs per precision, tokenizer files and `manifest.json`.
The service reads every preprocessing constant from the manifest, never from export code.
A pack that is partial or of another format version fails loudly, naming the file.

manifest.json (format 1)::

    {
      "format_version": 1,
      "kind": "clap" | "emotion2vec" | "chattts",
      "source": "laion/clap-htsat-unfused" | "tiny(seed=0)" | ...,
      "demo": true,                      # random weights: outputs mean nothing
      "graphs": {"audio": {"fp32": {"file": "audio.fp32.onnx",
                                    "inputs": ["input_features"],
                                    "outputs": ["audio_embeds"],
                                    "batch_invariant": true,
                                    "quantization": {...}}}},
      "files": {"tokenizer": "tokenizer.json"},
      "constants": {...model-specific preprocessing constants...}
    }
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import PackError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")


class GraphVariant(BaseModel):
    model_config = ConfigDict(extra="allow")

    file: str
    inputs: list[str]
    outputs: list[str]
    batch_invariant: bool = True
    quantization: dict[str, Any] = Field(default_factory=dict)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    format_version: int
    kind: str
    source: str
    demo: bool = False
    graphs: dict[str, dict[str, GraphVariant]]
    files: dict[str, str] = Field(default_factory=dict)
    constants: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class ModelPack:
    """A validated pack on disk."""

    root: Path
    manifest: Manifest

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def constants(self) -> dict[str, Any]:
        return self.manifest.constants

    def precisions(self, graph: str) -> list[str]:
        return [p for p in PRECISIONS if p in self.manifest.graphs.get(graph, {})]

    def common_precisions(self) -> list[str]:
        """Precisions that every graph of the pack has."""
        sets = [set(v) for v in self.manifest.graphs.values()]
        common = set.intersection(*sets) if sets else set()
        return [p for p in PRECISIONS if p in common]

    def graph(self, name: str, precision: str) -> tuple[Path, GraphVariant]:
        variants = self.manifest.graphs.get(name)
        if variants is None:
            raise PackError(f"{self.root / MANIFEST}: no graph named {name!r}")
        variant = variants.get(precision)
        if variant is None:
            raise PackError(
                f"{self.root / MANIFEST}: graph {name!r} has no {precision} variant "
                f"(has: {', '.join(variants) or 'none'}); build it with `python -m quant`"
            )
        return self.root / variant.file, variant

    def file(self, key: str) -> Path:
        name = self.manifest.files.get(key)
        if name is None:
            raise PackError(f"{self.root / MANIFEST}: no file entry {key!r}")
        return self.root / name


def load_pack(root: Path, expected_kind: str | None = None) -> ModelPack:
    """Read and validate a pack; every file it names must exist."""
    path = root / MANIFEST
    if not path.is_file():
        raise PackError(f"model pack {root}: missing {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PackError(f"{path}: unreadable manifest ({exc})") from exc
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise PackError(
            f"{path}: format_version {version!r}, this service reads {FORMAT_VERSION}; "
            "re-export the pack with this version's `python -m export`"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise PackError(f"{path}: invalid manifest: {exc}") from exc
    if expected_kind is not None and manifest.kind != expected_kind:
        raise PackError(f"{path}: kind {manifest.kind!r}, expected {expected_kind!r}")
    named = [v.file for variants in manifest.graphs.values() for v in variants.values()]
    named += list(manifest.files.values())
    for name in named:
        if not (root / name).is_file():
            raise PackError(f"model pack {root}: {MANIFEST} names {name}, which is missing")
    return ModelPack(root=root, manifest=manifest)
