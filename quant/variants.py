"""Write fp16 / int8 variants of every graph of a pack and record them in its manifest.

Each variant entry keeps the fp32 entry's inputs and outputs and adds `quantization`:
method and settings, the calibration set (description, item count, sha256), the source
graph's sha256, and the onnx / onnxruntime versions that made it. `batch_invariant` is
false for dynamic int8 only.

A composed graph (an entry with `composed`: CLAP's waveform graph) is never converted or
quantized itself: its variant is its fp32 front-end put in front of the new variant of
the graph it feeds (export/clap_waveform.py), so the log-mel stays float64 at every
precision and the rest is the same graph the host path runs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnxruntime

from export.clap_waveform import compose_waveform_graph
from export.pack import read_manifest, update_manifest
from quant import fp16, int8
from quant.calibration import AudioSource, ItemReader, graph_items, items_hash
from quant.recipes import Method, recipe
from service.runtime.packs import ModelPack, load_pack

log = logging.getLogger("audioserve.quant")


@dataclass(frozen=True)
class VariantRequest:
    precision: str  # fp16 | int8
    method: Method | None = None
    """int8 only; None: each graph's recipe default."""
    bits: int = 8
    accuracy_level: int | None = None
    """Weight-only compute override (4: int8 activations); None: the recipe's."""
    source: AudioSource = field(default_factory=AudioSource)
    prompts: tuple[str, ...] = ()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tool_versions() -> dict[str, str]:
    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def make_variants(root: Path, request: VariantRequest) -> dict[str, dict[str, Any]]:
    """Every graph of the pack at `root` -> `<graph>.<precision>.onnx`; returns new entries."""
    pack = load_pack(root)
    manifest = read_manifest(root)
    entries: dict[str, dict[str, Any]] = {}
    graphs = manifest["graphs"]
    # composed graphs last: they are built on the new variants of the others
    for graph in sorted(graphs, key=lambda g: "composed" in graphs[g].get("fp32", {})):
        variants = graphs[graph]
        base = variants.get("fp32")
        if base is None:
            raise SystemExit(f"{root}: graph {graph!r} has no fp32 variant to start from")
        started = time.monotonic()
        if "composed" in base:
            entry = _composed_variant(pack.root, base, graphs, request.precision)
        else:
            entry = _variant(pack, graph, base, request)
        entries[graph] = entry
        variants[request.precision] = entry
        log.info("%s/%s %s (%s) in %.1f s", pack.kind, graph, request.precision,
                 entry["quantization"]["method"], time.monotonic() - started)
    update_manifest(root, manifest)
    load_pack(root)  # the result must still be a valid pack
    return entries


def _composed_variant(root: Path, base: dict[str, Any], graphs: dict[str, Any],
                      precision: str) -> dict[str, Any]:
    """The fp32 front-end in front of `precision` of the graph it feeds (module note)."""
    spec = base["composed"]
    fed = graphs[spec["graph"]][precision]
    dst_name = base["file"].replace(".fp32.", f".{precision}.")
    if dst_name == base["file"]:
        dst_name = f"{Path(base['file']).stem}.{precision}.onnx"
    compose_waveform_graph(root / spec["front_end"], root / fed["file"], root / dst_name)
    entry = {k: v for k, v in base.items() if k not in ("file", "quantization", "composed")}
    entry.update(
        file=dst_name, batch_invariant=bool(fed.get("batch_invariant", True)),
        composed={**spec, "graph_file": fed["file"]},
        quantization={"method": "composed", "front_end": f"{spec['front_end']} (fp32 graph, "
                      f"{spec.get('compute', 'float32')} inside: not converted)",
                      "fed_graph": f"{spec['graph']} {precision} "
                      f"({fed.get('quantization', {}).get('method', 'export')})",
                      "source_sha256": file_sha256(root / fed["file"]),
                      "tools": tool_versions()})
    return entry


def _variant(pack: ModelPack, graph: str, base: dict[str, Any],
             request: VariantRequest) -> dict[str, Any]:
    rec = recipe(pack.kind, graph)
    src = pack.root / base["file"]
    dst_name = f"{graph}.{request.precision}.onnx"
    if request.precision == "fp16":
        info = fp16.convert(src, pack.root / dst_name, keep_ops=rec.fp16_keep_ops)
        invariant = True
    else:
        method = request.method or rec.int8_method
        op_types = ("MatMul", "Gemm") if method is Method.WEIGHT_ONLY else rec.int8_op_types
        if int8.count_ops(src, op_types) == 0:
            # Nothing to quantize (e.g. an embedding lookup): the int8 entry names the
            # fp32 file, so every graph has an int8 entry and the service can pick int8.
            return {**base, "batch_invariant": base.get("batch_invariant", True),
                    "quantization": {"method": "none", "reason": f"no {'/'.join(op_types)} "
                                     "nodes: kept fp32", "tools": tool_versions()}}
        info, invariant = _int8(pack, graph, src, pack.root / dst_name, method, op_types,
                                request)
    info.update(source_file=base["file"], source_sha256=file_sha256(src),
                tools=tool_versions())
    entry = {k: v for k, v in base.items() if k not in ("file", "quantization")}
    entry.update(file=dst_name, batch_invariant=invariant and base.get("batch_invariant", True),
                 quantization=info)
    return entry


def _int8(pack: ModelPack, graph: str, src: Path, dst: Path, method: Method,
          op_types: tuple[str, ...], request: VariantRequest) -> tuple[dict[str, Any], bool]:
    """Quantize one graph; returns the manifest's quantization record and whether the
    result is batch-invariant (see quant/recipes.py for when it is not)."""
    rec = recipe(pack.kind, graph)
    reader, calibration = None, None
    if method is Method.STATIC:
        items = graph_items(pack, graph, request.source, list(request.prompts))
        reader = ItemReader(items)
        calibration = {"source": request.source.describe(), "items": len(items),
                       "sha256": items_hash(items)}
    level = request.accuracy_level or rec.int8_accuracy_level
    info: dict[str, Any] = int8.quantize(
        src, dst, method, op_types=op_types, reader=reader, bits=request.bits,
        keep_nodes=rec.int8_keep_nodes, accuracy_level=level)
    if calibration is not None:
        info["calibration"] = calibration
    if method is Method.WEIGHT_ONLY and request.bits == 4:
        info["note"] = "4-bit weights recorded under int8"
    quantized_activations = method is Method.STATIC or (
        method is Method.WEIGHT_ONLY and level is not None)
    invariant = method.batch_invariant and not (rec.padded_items and quantized_activations)
    if not invariant:
        info["batch_dependent_because"] = (
            "activation scales per batch" if method is Method.DYNAMIC else
            "padded items: fp32 last-bit differences become quantization steps")
    return info, invariant
