"""quant/: fp16 and int8 variants of every tiny pack, served by the real app; batch
invariance of the default int8 (and its absence in dynamic int8); the report's table."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from quant.__main__ import main as quant_main
from quant.calibration import AudioSource, graph_items
from quant.report import batch_invariance
from service.runtime.packs import load_pack
from tests.conftest import running_app
from tests.tools import require_module

KINDS = ("clap", "emotion2vec", "chattts")
DEFAULT_INT8 = {("clap", "audio"): "static", ("clap", "text"): "weight-only",
                ("clap", "audio_waveform"): "composed",  # front-end + audio int8
                ("emotion2vec", "model"): "weight-only"}  # ChatTTS: weight-only throughout
CALIBRATION = ["--items", "4", "--seconds", "1.5"]
INVARIANT_TOLERANCE = 1e-5
"""'0 or ~1e-6': MLAS picks GEMV or GEMM kernels by batch size, float sums differ there."""


def _build(kind: str, out: Path) -> None:
    if kind == "chattts":
        module = require_module("export.chattts", "chattts: bash export/install_chattts.sh")
        module.build_tiny(out)
        return
    module = __import__(f"export.{kind}", fromlist=["build_tiny"])
    module.build_tiny(out)


@pytest.fixture(scope="session")
def quant_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny packs of every model (those whose exporter imports), each with fp16 and int8."""
    root = tmp_path_factory.mktemp("quant_models")
    for kind in KINDS:
        try:
            _build(kind, root / kind)
        except pytest.skip.Exception:
            continue
        for precision in ("fp16", "int8"):
            assert quant_main([str(root / kind), "--to", precision, *CALIBRATION]) == 0
    return root


def _pack_dir(root: Path, kind: str) -> Path:
    if not (root / kind).is_dir():
        pytest.skip(f"no tiny {kind} pack (its exporter's dependencies are not installed)")
    return root / kind


def _wav(seconds: float, rate: int, seed: int) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    clip = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    buf = io.BytesIO()
    sf.write(buf, clip.astype(np.float32), rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


@pytest.mark.parametrize("kind", KINDS)
def test_every_graph_gets_recorded_variants(quant_models: Path, kind: str) -> None:
    pack = load_pack(_pack_dir(quant_models, kind), expected_kind=kind)
    assert pack.common_precisions() == ["fp32", "fp16", "int8"]
    for graph, variants in pack.manifest.graphs.items():
        fp32, fp16, int8 = variants["fp32"], variants["fp16"], variants["int8"]
        assert fp16.file == f"{graph}.fp16.onnx"
        assert (fp16.inputs, fp16.outputs) == (fp32.inputs, fp32.outputs)
        assert fp16.quantization["tools"]["onnxruntime"]
        assert int8.batch_invariant
        q = int8.quantization
        if q["method"] == "none":  # nothing quantizable: the entry names the fp32 graph
            assert int8.file == fp32.file and kind == "chattts"
            continue
        assert int8.file == f"{graph}.int8.onnx"
        assert q["method"] == DEFAULT_INT8.get((kind, graph), "weight-only")
        assert q["source_sha256"] and q["tools"]["onnx"]
        if q["method"] == "static":
            assert q["calibration"]["items"] == 4
            assert len(q["calibration"]["sha256"]) == 64
        # a quantized graph is smaller than its fp32 source, or at least not the same file
        assert (pack.root / int8.file).read_bytes() != (pack.root / fp32.file).read_bytes()
    if kind != "clap":  # weight-only with float compute: batching stays exact
        main = "gpt" if kind == "chattts" else "model"
        q = pack.manifest.graphs[main]["int8"].quantization
        assert (q["method"], q["accuracy_level"]) == ("weight-only", None)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_clap_serves_each_precision(quant_models: Path, precision: str) -> None:
    _pack_dir(quant_models, "clap")
    with running_app(models_dir=quant_models, models="clap", clap_precision=precision) as c:
        models = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
        assert models["clap"]["precision"] == precision
        r = c.post("/classify", files={"file": ("a.wav", _wav(2.0, 48_000, 0), "audio/wav")},
                   data={"labels": ["dog", "rain", "music"]})
        assert r.status_code == 200, r.text
        probs = [x["probability"] for x in r.json()["labels"]]
        assert abs(sum(probs) - 1.0) < 1e-4


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_emotion2vec_serves_each_precision(quant_models: Path, precision: str) -> None:
    _pack_dir(quant_models, "emotion2vec")
    with running_app(models_dir=quant_models, models="emotion2vec",
                     emotion2vec_precision=precision) as c:
        models = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
        assert models["emotion2vec"]["precision"] == precision
        r = c.post("/emotion", files={"file": ("a.wav", _wav(1.5, 16_000, 1))})
        assert r.status_code == 200, r.text
        assert json.dumps(r.json())  # a well-formed JSON body


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_chattts_serves_each_precision(quant_models: Path, precision: str) -> None:
    _pack_dir(quant_models, "chattts")
    with running_app(models_dir=quant_models, models="chattts",
                     chattts_precision=precision) as c:
        models = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
        assert models["chattts"]["precision"] == precision
        r = c.post("/tts", json={"text": "hello world", "seed": 3, "max_new_tokens": 6})
        assert r.status_code == 200, r.text
        assert r.content[:4] == b"RIFF"


# (kind, graph) of every default int8 that the batcher relies on
INVARIANT_GRAPHS = [("clap", "audio"), ("clap", "text"), ("emotion2vec", "model"),
                    ("chattts", "gpt"), ("chattts", "vocos")]


@pytest.mark.parametrize(("kind", "graph"), INVARIANT_GRAPHS)
def test_default_int8_is_batch_invariant(quant_models: Path, kind: str, graph: str) -> None:
    pack = load_pack(_pack_dir(quant_models, kind))
    items = graph_items(pack, graph, AudioSource(count=8, seconds=1.5, seed=5), [])
    assert len(items) == 8
    assert batch_invariance(pack, graph, "int8", items) <= INVARIANT_TOLERANCE


def test_dynamic_int8_is_flagged_and_batch_dependent(quant_models: Path,
                                                     tmp_path: Path) -> None:
    pack_dir = tmp_path / "clap"
    shutil.copytree(_pack_dir(quant_models, "clap"), pack_dir)
    assert quant_main([str(pack_dir), "--to", "int8", "--method", "dynamic"]) == 0
    pack = load_pack(pack_dir)
    audio = pack.manifest.graphs["audio"]["int8"]
    assert audio.quantization["method"] == "dynamic"
    assert audio.batch_invariant is False
    items = graph_items(pack, "audio", AudioSource(count=8, seconds=1.5, seed=5), [])
    # per-batch activation scales: an item's embedding moves with its batch-mates
    assert batch_invariance(pack, "audio", "int8", items) > 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_report_writes_its_table(quant_models: Path, tmp_path: Path, kind: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The report goes to stdout and where `--out` says; the pack folder is not written."""
    pack_dir = tmp_path / kind
    shutil.copytree(_pack_dir(quant_models, kind), pack_dir)
    before = sorted(p.relative_to(pack_dir) for p in pack_dir.rglob("*"))
    out = tmp_path / "reports" / f"{kind}.md"
    assert quant_main(["report", str(pack_dir), "--repeats", "1", "--seconds", "1.5",
                       "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert capsys.readouterr().out.strip() == text.strip()
    assert sorted(p.relative_to(pack_dir) for p in pack_dir.rglob("*")) == before
    pack = load_pack(pack_dir)
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line.split("|")[1:-1]
            for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    for graph in pack.manifest.graphs:
        for precision in ("fp32", "fp16", "int8"):
            assert (graph, precision) in rows, f"no row for {graph} {precision}"
    # columns: graph, precision, method, flag, size, B=1, B=8, speed-up, max diff, cos,
    # top-1, batch
    main = {"clap": "audio", "emotion2vec": "model", "chattts": "gpt"}[kind]
    fp16_diff = float(rows[(main, "fp16")][8])
    int8_diff = float(rows[(main, "int8")][8])
    assert 0 < fp16_diff < int8_diff < 0.1  # fp16 is closer to fp32 than int8, both close
    if kind == "clap":
        assert float(rows[("audio", "fp16")][9]) > 0.999
        assert float(rows[("audio", "int8")][9]) > 0.95
        assert "Zero-shot classify top-1 agreement" in text
    if kind == "emotion2vec":
        assert float(rows[("model", "fp16")][10]) == 1.0
    if kind == "chattts":
        assert "teacher-forced" in text and "GPT decode step" in text
        assert "- int8: 1.000" in text.split("Batch invariance of generation")[1]


def test_weight_only_4_bit_gpt(quant_models: Path, tmp_path: Path) -> None:
    pack_dir = tmp_path / "chattts"
    shutil.copytree(_pack_dir(quant_models, "chattts"), pack_dir)
    eight_bit = (pack_dir / "gpt.int8.onnx").stat().st_size
    assert quant_main([str(pack_dir), "--to", "int8", "--bits", "4"]) == 0
    pack = load_pack(pack_dir)
    gpt = pack.manifest.graphs["gpt"]["int8"]
    assert (gpt.quantization["method"], gpt.quantization["bits"]) == ("weight-only", 4)
    assert gpt.batch_invariant
    assert (pack_dir / gpt.file).stat().st_size < eight_bit
    items = graph_items(pack, "gpt", AudioSource(count=8, seed=5), [])
    assert batch_invariance(pack, "gpt", "int8", items) <= INVARIANT_TOLERANCE


def test_static_int8_on_padded_items_is_flagged(quant_models: Path, tmp_path: Path) -> None:
    """Static scales on padded items are not batch-invariant at the real size (see
    quant/recipes.py); the manifest must say so rather than promise it."""
    pack_dir = tmp_path / "emotion2vec"
    shutil.copytree(_pack_dir(quant_models, "emotion2vec"), pack_dir)
    assert quant_main([str(pack_dir), "--to", "int8", "--method", "static",
                       *CALIBRATION]) == 0
    model = load_pack(pack_dir).manifest.graphs["model"]["int8"]
    assert model.quantization["method"] == "static"
    assert model.batch_invariant is False
    assert "padded" in model.quantization["batch_dependent_because"]


def test_calibration_from_an_audio_folder(quant_models: Path, tmp_path: Path,
                                          shared_data: Path) -> None:
    """Real speech clips decoded by the service's decoder calibrate CLAP's audio tower
    (48 kHz log-mel windows); the manifest names the folder and hashes what it saw."""
    pack_dir = tmp_path / "clap"
    shutil.copytree(_pack_dir(quant_models, "clap"), pack_dir)
    generated = load_pack(pack_dir).manifest.graphs["audio"]["int8"].quantization
    speech = shared_data / "speech"
    assert quant_main([str(pack_dir), "--to", "int8", "--calibration", str(speech),
                       "--items", "3", "--seconds", "2"]) == 0
    calibration = load_pack(pack_dir).manifest.graphs["audio"]["int8"].quantization[
        "calibration"]
    assert str(speech) in calibration["source"] and calibration["items"] == 3
    assert calibration["sha256"] != generated["calibration"]["sha256"]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_chattts_greedy_codes_batched_equal_alone(quant_models: Path, precision: str) -> None:
    """Prompts of different lengths, left-padded into one batch as the engine pads them,
    generate the same greedy codes as each prompt alone, at fp32 and the default int8."""
    from quant.chattts_inputs import batched_vs_alone, prompt_ids

    pack = load_pack(_pack_dir(quant_models, "chattts"))
    prompts = ["a", "a longer prompt than that", "hello there", "one two three four five"]
    _, mask = prompt_ids(pack, prompts)
    assert len(set(mask.sum(axis=1).tolist())) > 1  # really padded
    assert batched_vs_alone(pack, precision, prompts) == 1.0


def test_int8_compute_is_flagged_on_the_gpt(quant_models: Path, tmp_path: Path) -> None:
    pack_dir = tmp_path / "chattts"
    shutil.copytree(_pack_dir(quant_models, "chattts"), pack_dir)
    assert quant_main([str(pack_dir), "--to", "int8", "--accuracy-level", "4"]) == 0
    graphs = load_pack(pack_dir).manifest.graphs
    assert graphs["gpt"]["int8"].quantization["accuracy_level"] == 4
    assert graphs["gpt"]["int8"].batch_invariant is False  # rows see left-padded keys
    assert graphs["head_text"]["int8"].batch_invariant is True  # one row per item
