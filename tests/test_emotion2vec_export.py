"""The Emotion2vec export: pack contents, reproducibility, strict folder loading, and the
ONNX graph vs the PyTorch definition on padded batches of mixed lengths."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export import emotion2vec as exp
from export.emotion2vec_model import Emotion2vec
from export.pack import read_manifest
from service.runtime.packs import ModelPack
from tests.emotion2vec_fixtures import (  # noqa: F401  (fixtures)
    emotion_models_dir,
    emotion_pack,
    frames_for,
)


@pytest.fixture(scope="module")
def tiny_torch() -> Emotion2vec:
    """The same weights the tiny pack was exported from (build_tiny is seeded)."""
    return exp.random_model(exp.model_conf("tiny"), exp.TINY_SEED)


@pytest.fixture(scope="module")
def session(emotion_pack: ModelPack) -> ort.InferenceSession:  # noqa: F811
    path, _ = emotion_pack.graph("model", "fp32")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, items: list[np.ndarray]) -> dict[str, np.ndarray]:
    lengths = np.array([len(x) for x in items], np.int64)
    wav = np.zeros((len(items), int(lengths.max())), np.float32)
    for i, x in enumerate(items):
        wav[i, : len(x)] = x
    outs = session.run(exp.OUTPUTS, {"waveform": wav, "lengths": lengths})
    return dict(zip(exp.OUTPUTS, outs, strict=True))


def test_manifest(emotion_pack: ModelPack) -> None:  # noqa: F811
    m, c = emotion_pack.manifest, emotion_pack.constants
    assert (m.kind, m.demo, m.source) == ("emotion2vec", True, "tiny(seed=0)")
    variant = m.graphs["model"]["fp32"]
    assert (variant.inputs, variant.outputs) == (exp.INPUTS, exp.OUTPUTS)
    assert c["sample_rate"] == 16_000 and c["normalize"] is True
    assert (c["frame_rate"], c["hop_samples"], c["receptive_field_samples"], c["min_samples"]) \
        == (50.0, 320, 400, 400)
    labels = c["labels"]
    assert [x["en"] for x in labels] == ["angry", "disgusted", "fearful", "happy", "neutral",
                                         "other", "sad", "surprised", "unknown"]
    assert [x["zh"] for x in labels[:3]] == ["生气", "厌恶", "恐惧"]
    assert labels[-1]["token"] == "<unk>" and all(x["emoji"] for x in labels)
    tokens = emotion_pack.file("tokens").read_text(encoding="utf-8").split()
    assert tokens == [x["token"] for x in labels]


def test_head_file_is_the_models_proj(
    emotion_pack: ModelPack, tiny_torch: Emotion2vec  # noqa: F811
) -> None:
    head = np.load(emotion_pack.file("head"))
    assert head.shape == (9, emotion_pack.constants["embed_dim"] + 1)
    np.testing.assert_array_equal(head[:, :-1], tiny_torch.proj.weight.detach().numpy())
    np.testing.assert_array_equal(head[:, -1], tiny_torch.proj.bias.detach().numpy())


def test_graph_padded_batch_equals_torch_items(session: ort.InferenceSession,
                                               tiny_torch: Emotion2vec,
                                               emotion_pack: ModelPack) -> None:  # noqa: F811
    rng = np.random.default_rng(0)
    lengths = [40_000, 16_003, 7_777, 400, 401]
    items = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    got = _run(session, items)
    head = np.load(emotion_pack.file("head"))
    for i, item in enumerate(items):
        with torch.no_grad():
            ref = tiny_torch(torch.from_numpy(item)[None], torch.tensor([len(item)]))
        n = frames_for(len(item))
        assert int(got["frame_lengths"][i]) == int(ref.frame_lengths[0]) == n
        np.testing.assert_allclose(got["logits"][i], ref.logits[0].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got["frame_logits"][i, :n], ref.frame_logits[0].numpy(),
                                   atol=1e-4, rtol=0)
        np.testing.assert_allclose(got["embedding"][i], ref.embedding[0].numpy(), atol=1e-4,
                                   rtol=0)
        assert not got["feats"][i, n:].any()
        # the head outside the graph gives the graph's logits (long-audio merge relies on it)
        logits = head[:, :-1] @ got["embedding"][i] + head[:, -1]
        np.testing.assert_allclose(logits, got["logits"][i], atol=1e-4, rtol=0)


def test_graph_frame_axis_follows_the_formula(session: ort.InferenceSession) -> None:
    for n in (400, 719, 720, 1_040, 33_333):
        out = _run(session, [np.full(n, 0.05, np.float32)])
        assert out["frame_logits"].shape == (1, frames_for(n), 9)
        assert int(out["frame_lengths"][0]) == frames_for(n)


def test_build_tiny_is_reproducible(tmp_path: Path, emotion_models_dir: Path) -> None:  # noqa: F811
    exp.build_tiny(tmp_path / "again")
    first = emotion_models_dir / "emotion2vec"
    for name in ("manifest.json", exp.GRAPH_FILE, exp.HEAD_FILE, exp.TOKENS_FILE):
        digest = [hashlib.sha256((root / name).read_bytes()).hexdigest()
                  for root in (first, tmp_path / "again")]
        assert digest[0] == digest[1], name


def test_cli_tiny(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    exp.add_arguments(parser)
    assert exp.run(parser.parse_args(["--tiny", "--out", str(tmp_path / "p")])) == 0
    assert read_manifest(tmp_path / "p")["source"] == "tiny(seed=0)"
    with pytest.raises(SystemExit):  # exactly one source
        parser.parse_args(["--tiny", "--random-real", "base"])


def test_export_from_folder_fails_on_a_missing_key(tmp_path: Path) -> None:
    conf = exp.model_conf("tiny")
    state = exp.random_model(conf, seed=0).state_dict()
    del state["modality_encoders.AUDIO.project_features.2.weight"]
    exp.write_model_folder(tmp_path / "src", conf, state)
    with pytest.raises(exp.CheckpointMismatch, match=r"project_features\.2\.weight"):
        exp.export_folder(tmp_path / "src", tmp_path / "out", source="x", demo=True)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_export_from_folder_keeps_config_labels(tmp_path: Path) -> None:
    """A real folder's config and tokens drive the pack (here: normalize off, 4 labels)."""
    conf = exp.model_conf("tiny")
    conf["normalize"] = False
    torch.manual_seed(0)
    model = exp.build_model(conf, 4)
    exp.write_model_folder(tmp_path / "src", conf, model.state_dict())
    (tmp_path / "src" / exp.TOKENS_FILE).write_text("开心/happy\n难过/sad\n中立/neutral\n<unk>\n",
                                                    encoding="utf-8")
    exp.export_folder(tmp_path / "src", tmp_path / "out", source="folder", demo=False)
    c = read_manifest(tmp_path / "out")["constants"]
    assert c["normalize"] is False
    assert [x["en"] for x in c["labels"]] == ["happy", "sad", "neutral", "unknown"]
