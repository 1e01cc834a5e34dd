"""The fused CLAP variant: branch-free export vs upstream's branch, the fusion front-end vs
ClapFeatureExtractor, and served probabilities vs PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export import clap as export_clap
from export.clap_fused import reference_embeds
from service.audio import clap_features as cf
from service.runtime.packs import load_pack
from tests.clap_fixtures import SR, extractor_from_pack, make_clip, middle_choice, wav_bytes
from tests.conftest import running_app

pytest_plugins = ("tests.clap_fixtures",)

LABELS = ["dog barking", "rain", "church bells", "a man speaking"]
TEMPLATE = "This is a sound of {label}."


@pytest.mark.parametrize("rows", [[True, False, True], [False, False], [True, True]])
def test_fused_graph_matches_upstream_branch(clap_fused_models_dir: Path,
                                             rows: list[bool]) -> None:
    pack = load_pack(clap_fused_models_dir / "clap", expected_kind="clap")
    assert pack.constants["fusion"] is True and pack.constants["mel_scale"] == "htk"
    path, variant = pack.graph("audio", "fp32")
    assert variant.inputs == ["input_features", "is_longer"]
    model = export_clap.tiny_model(fused=True)
    gen = torch.Generator().manual_seed(9)
    features = torch.randn(len(rows), 4, 1001, 64, generator=gen) * 20 - 40
    is_longer = torch.tensor(rows).reshape(-1, 1)
    with torch.no_grad():
        expected = reference_embeds(model, features, is_longer).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_features": features.numpy(), "is_longer": is_longer.numpy()})
    assert np.abs(got[0] - expected).max() < 1e-5


@pytest.mark.parametrize(("seconds", "longer"), [(2.2, False), (10.0, False), (10.02, True),
                                                 (23.7, True)])
def test_fusion_features_match_extractor(clap_fused_models_dir: Path, seconds: float,
                                         longer: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    pack = load_pack(clap_fused_models_dir / "clap")
    cfg = cf.MelConfig.from_constants(pack.constants)
    monkeypatch.setattr(np.random, "choice", middle_choice)
    clip = make_clip(seconds, seed=4)
    ours, is_longer = cf.fusion_features(clip, cfg)
    theirs = extractor_from_pack(pack)(clip, sampling_rate=SR, return_tensors="np")
    assert ours.shape == (4, 1001, 64) and is_longer is longer
    assert np.abs(ours - np.asarray(theirs["input_features"])[0]).max() <= 1e-3


@pytest.mark.parametrize(
    ("total", "expected"), [(1002, [0, 1, 0]), (1004, [1, 2, 3]), (2001, [167, 501, 834])]
)
def test_fusion_crop_starts_are_the_middle_of_each_third(total: int,
                                                         expected: list[int]) -> None:
    assert cf.fusion_crop_starts(total, 1001) == expected


def _torch_probs(pack_dir: Path, clip: np.ndarray) -> np.ndarray:
    from transformers import PreTrainedTokenizerFast

    pack = load_pack(pack_dir)
    model = export_clap.tiny_model(fused=True)
    features = extractor_from_pack(pack)(clip, sampling_rate=SR, return_tensors="pt")
    is_longer = torch.tensor([[clip.shape[0] > pack.constants["max_length_samples"]]])
    tok = PreTrainedTokenizerFast(tokenizer_file=str(pack.file("tokenizer")), pad_token="<pad>")
    text = tok([TEMPLATE.format(label=x) for x in LABELS], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                    input_features=features["input_features"], is_longer=is_longer)
    return out.logits_per_audio[0].softmax(-1).numpy()


@pytest.mark.parametrize("seconds", [3.3, 23.7])
def test_fused_served_probabilities_match_pytorch(clap_fused_models_dir: Path, seconds: float,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(np.random, "choice", middle_choice)
    clip = make_clip(seconds, seed=6)
    expected = _torch_probs(clap_fused_models_dir / "clap", clip)
    with running_app(models_dir=clap_fused_models_dir, models="clap", warmup=False) as client:
        r = client.post("/classify", files={"file": ("c.wav", wav_bytes(clip), "audio/wav")},
                        data={"labels": LABELS})
        assert r.status_code == 200, r.text
        body = r.json()
        refused = client.post("/classify", data={"labels": LABELS, "per_window": "true"},
                              files={"file": ("c.wav", wav_bytes(clip), "audio/wav")})
    assert (body["windows_total"], body["windows_used"]) == (1, 1)
    served = {s["label"]: s["probability"] for s in body["labels"]}
    np.testing.assert_allclose([served[x] for x in LABELS], expected, atol=1e-4, rtol=0)
    assert refused.status_code == 422 and "unfused" in refused.json()["error"]["message"]
