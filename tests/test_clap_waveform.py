"""CLAP's waveform graph (log-mel inside) vs ClapFeatureExtractor and vs the host path:
the front-end's ops, the log-mel in dB, embeddings and probabilities served both ways,
batched == alone, the fused variant, and its fp16/int8 variants composed by quant/."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.clap_waveform import CUDA_KERNELS, FRONT_END_PREFIX, LOG_MEL, log_mel_output
from service.audio import clap_features as cf
from service.audio.decode import decode_audio
from service.errors import PackError
from service.runtime.packs import ModelPack, load_pack
from tests.clap_fixtures import SR, extractor_from_pack, make_clip, wav_bytes
from tests.conftest import SHARED_DATA, running_app

pytest_plugins = ("tests.clap_fixtures",)

DB_TOLERANCE = 1e-3
EMBED_TOLERANCE = 1e-4
LABELS = ["dog barking", "rain", "church bells", "a man speaking", "siren"]
ELEM = {onnx.TensorProto.FLOAT: "float", onnx.TensorProto.DOUBLE: "double",
        onnx.TensorProto.INT64: "int64", onnx.TensorProto.BOOL: "bool",
        onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.INT32: "int32"}


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _windows(cfg: cf.MelConfig) -> list[np.ndarray]:
    """Padded 10 s windows of varied clips: short (repeat-padded), full, real speech, a
    quiet pure tone (top mel bands at fp32's rounding floor) and silence."""
    clips = [make_clip(s, seed=i) for i, s in enumerate([0.37, 3.3, 10.0])]
    speech = sorted((SHARED_DATA / "speech").glob("*.flac"))[:2]
    clips += [decode_audio(p.read_bytes(), target_rate=SR, max_seconds=10,
                           on_long="truncate").samples for p in speech]
    t = np.arange(cfg.max_length_samples) / SR
    clips.append((0.01 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32))
    clips.append(np.zeros(cfg.max_length_samples, np.float32))
    return [cf.pad_short(c, cfg) for c in clips]


def _extractor_mel(pack: ModelPack, window: np.ndarray) -> np.ndarray:
    out = extractor_from_pack(pack)(window, sampling_rate=SR, return_tensors="np")
    return np.asarray(out["input_features"])[0]


def test_front_end_uses_only_ops_the_cuda_provider_has(clap_pack: ModelPack) -> None:
    path, variant = clap_pack.graph("audio_waveform", "fp32")
    assert variant.inputs == ["waveform"] and variant.outputs == ["audio_embeds"]
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    front = [n for n in model.graph.node if n.name.startswith(FRONT_END_PREFIX)]
    assert len(front) > 10
    used = set()
    for node in front:
        elem = ELEM.get(types.get(node.input[0], 0), "?") if node.input else "float"
        assert node.op_type in CUDA_KERNELS, node.op_type
        assert elem in CUDA_KERNELS[node.op_type], (node.name, node.op_type, elem)
        used.add((node.op_type, elem))
    assert ("MatMul", "double") in used  # the DFT and the mel bank, in float64
    assert not {"DFT", "STFT"} & {n.op_type for n in model.graph.node}


def test_log_mel_in_graph_matches_extractor(clap_pack: ModelPack) -> None:
    cfg = cf.MelConfig.from_constants(clap_pack.constants)
    windows = _windows(cfg)
    session = _session(log_mel_output(clap_pack.graph("audio_waveform", "fp32")[0]))
    mel = session.run([LOG_MEL], {"waveform": np.stack(windows)})[0]
    assert mel.shape == (len(windows), 1, cfg.frames, cfg.n_mels) and mel.dtype == np.float32
    for row, window in zip(mel, windows, strict=True):
        theirs = _extractor_mel(clap_pack, window)
        assert np.abs(row - theirs).max() <= DB_TOLERANCE
        # no worse than the host path's float32 FFT on the same window
        host = cf.log_mel(window, cfg)[None]
        assert np.abs(row - theirs).max() <= max(np.abs(host - theirs).max(), 2e-5)


def test_waveform_graph_matches_host_features_batched_and_alone(clap_pack: ModelPack) -> None:
    cfg = cf.MelConfig.from_constants(clap_pack.constants)
    windows = _windows(cfg)
    graph = _session(clap_pack.graph("audio_waveform", "fp32")[0])
    audio = _session(clap_pack.graph("audio", "fp32")[0])
    batched = graph.run(None, {"waveform": np.stack(windows)})[0]
    host = audio.run(None, {"input_features": np.stack(
        [cf.log_mel(w, cfg)[None] for w in windows])})[0]
    assert np.abs(batched - host).max() <= EMBED_TOLERANCE
    for i, window in enumerate(windows):
        alone = graph.run(None, {"waveform": window[None]})[0][0]
        assert np.abs(alone - batched[i]).max() <= 1e-6


def _classify(client: Any, body: bytes) -> dict[str, Any]:
    r = client.post("/classify", files={"file": ("a.wav", body, "audio/wav")},
                    data={"labels": ",".join(LABELS), "per_window": "true"})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _embed(client: Any, body: bytes) -> np.ndarray:
    r = client.post("/embed/audio", files={"file": ("a.wav", body, "audio/wav")})
    assert r.status_code == 200, r.text
    return np.array(r.json()["data"][0]["embedding"])


def test_served_graph_and_host_features_agree(clap_models_dir: Path) -> None:
    """The same uploads through the app both ways: a 23.7 s clip (3 windows, the last
    aligned to the end), a 2.1 s one (repeat-padded)."""
    bodies = [wav_bytes(make_clip(23.7, seed=3)), wav_bytes(make_clip(2.1, seed=4))]
    served: dict[str, list[Any]] = {}
    for mode in ("graph", "host"):
        with running_app(models_dir=clap_models_dir, models="clap", clap_features=mode,
                         max_wait_ms=0) as client:
            info = next(m for m in client.get("/v1/models").json()["data"] if m["id"] == "clap")
            assert info["features"] == mode
            results = [_classify(client, b) for b in bodies]
            embeds = [_embed(client, b) for b in bodies]
        stage = "windows" if mode == "graph" else "features"
        assert all(stage in r["timings_ms"] for r in results)
        served[mode] = [results, embeds]
    for graph, host in zip(served["graph"][0], served["host"][0], strict=True):
        assert [x["label"] for x in graph["labels"]] == [x["label"] for x in host["labels"]]
        for a, b in zip(graph["labels"], host["labels"], strict=True):
            assert abs(a["probability"] - b["probability"]) <= EMBED_TOLERANCE
        for wa, wb in zip(graph["per_window"], host["per_window"], strict=True):
            assert max(abs(x["probability"] - y["probability"])
                       for x, y in zip(wa["labels"], wb["labels"], strict=True)) <= 1e-4
    for a, b in zip(served["graph"][1], served["host"][1], strict=True):
        assert np.abs(a - b).max() <= EMBED_TOLERANCE


def test_auto_serves_host_features_on_cpu(clap_models_dir: Path) -> None:
    with running_app(models_dir=clap_models_dir, models="clap", clap_features="auto") as client:
        info = next(m for m in client.get("/v1/models").json()["data"] if m["id"] == "clap")
    assert info["provider"] == "cpu" and info["features"] == "host"


def test_graph_features_need_the_waveform_graph(clap_models_dir: Path, tmp_path: Path) -> None:
    """A pack exported before the waveform graph: `graph` fails start-up naming the pack,
    `auto` serves host features."""
    import json

    old = tmp_path / "clap"
    shutil.copytree(clap_models_dir / "clap", old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["graphs"]["audio_waveform"]
    (old / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(PackError, match="no audio_waveform graph"), running_app(
            models_dir=tmp_path, models="clap", clap_features="graph"):
        pass
    with running_app(models_dir=tmp_path, models="clap", clap_features="auto") as client:
        assert client.get("/readyz").status_code == 200


def test_fused_waveform_graph_takes_windows_and_host_maps_in_one_batch(
        clap_fused_models_dir: Path) -> None:
    """Rows of short clips read their window, a long clip's row the host's 4 maps; each
    equals the fused audio graph on the extractor-equivalent host features."""
    pack = load_pack(clap_fused_models_dir / "clap")
    cfg = cf.MelConfig.from_constants(pack.constants)
    path, variant = pack.graph("audio_waveform", "fp32")
    assert set(variant.inputs) == {"waveform", "long_features", "is_longer", "use_waveform"}
    clips = [make_clip(2.2, seed=1), make_clip(23.7, seed=2), make_clip(10.0, seed=3)]
    host = [cf.fusion_features(c, cfg) for c in clips]
    assert [longer for _, longer in host] == [False, True, False]
    zeros = np.zeros(cfg.max_length_samples, np.float32)
    use = [len(c) <= cfg.max_length_samples for c in clips]
    feeds = {
        "waveform": np.stack([cf.pad_short(c, cfg) if u else zeros
                              for c, u in zip(clips, use, strict=True)]),
        "long_features": np.stack([np.zeros_like(f) if u else f
                                   for (f, _), u in zip(host, use, strict=True)]),
        "is_longer": np.array([[longer] for _, longer in host]),
        "use_waveform": np.array([[u] for u in use]),
    }
    graph = _session(log_mel_output(path))
    embeds, mel = graph.run(["audio_embeds", LOG_MEL], feeds)
    expected = _session(pack.graph("audio", "fp32")[0]).run(None, {
        "input_features": np.stack([f for f, _ in host]), "is_longer": feeds["is_longer"]})[0]
    assert np.abs(embeds - expected).max() <= EMBED_TOLERANCE
    assert np.array_equal(mel[1], host[1][0])  # passed through untouched
    theirs = _extractor_mel(pack, cf.pad_short(clips[0], cfg))
    assert np.abs(mel[0] - theirs).max() <= DB_TOLERANCE


def test_fused_app_serves_both_kinds_of_clip_alike(clap_fused_models_dir: Path) -> None:
    bodies = [wav_bytes(make_clip(2.2, seed=1)), wav_bytes(make_clip(23.7, seed=2))]
    embeds = {}
    for mode in ("graph", "host"):
        with running_app(models_dir=clap_fused_models_dir, models="clap",
                         clap_features=mode) as client:
            embeds[mode] = [_embed(client, b) for b in bodies]
    for a, b in zip(embeds["graph"], embeds["host"], strict=True):
        assert np.abs(a - b).max() <= EMBED_TOLERANCE


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_quantized_waveform_graph_keeps_the_front_end_in_float64(
        clap_pack: ModelPack, tmp_path: Path, precision: str) -> None:
    from quant.__main__ import main as quant_main

    root = tmp_path / "clap"
    shutil.copytree(clap_pack.root, root)
    assert quant_main([str(root), "--to", precision, "--items", "4"]) == 0
    pack = load_pack(root)
    path, variant = pack.graph("audio_waveform", precision)
    assert variant.quantization["method"] == "composed"
    assert precision in pack.common_precisions() and variant.batch_invariant
    model = onnx.load(str(path))
    front = [n for n in model.graph.node if n.name.startswith(FRONT_END_PREFIX)]
    reference = onnx.load(str(root / "logmel.onnx"))
    assert sorted(n.op_type for n in front) == sorted(n.op_type for n in reference.graph.node)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") and
                   n.name.startswith(FRONT_END_PREFIX) for n in model.graph.node)
    # the HTSAT part is the audio graph of the same precision: identical answers
    cfg = cf.MelConfig.from_constants(pack.constants)
    windows = _windows(cfg)[:4]
    got = _session(path).run(None, {"waveform": np.stack(windows)})[0]
    mel = _session(log_mel_output(path)).run([LOG_MEL], {"waveform": np.stack(windows)})[0]
    audio = _session(pack.graph("audio", precision)[0])
    expected = audio.run(None, {"input_features": mel})[0]
    assert np.abs(got - expected).max() <= 1e-6
    alone = np.concatenate([_session(path).run(None, {"waveform": w[None]})[0]
                            for w in windows])
    assert np.abs(alone - got).max() <= 1e-6
