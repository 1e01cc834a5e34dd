"""Our Emotion2vec definition vs FunASR's own class, strict loading, masking, checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from export.emotion2vec import (
    CheckpointMismatch,
    load_checkpoint,
    load_strict,
    model_conf,
    random_model,
)
from export.emotion2vec_model import Emotion2vec, build_model, frame_count, parse_conv_spec
from tests.emotion2vec_fixtures import frames_for, funasr_emotion2vec  # noqa: F401  (fixture)

LENGTHS = [400, 3337, 16_000]


def _variant(name: str) -> dict[str, Any]:
    conf = model_conf("tiny")
    if name == "pre_ln_shared_scale":  # the other branches of every switch we implement
        audio = conf["modalities"]["audio"]
        conf.update(layer_norm_first=True, normalize=False)
        audio.update(learned_alibi_scale_per_layer=False, learned_alibi_scale_per_head=False,
                     conv_pos_pre_ln=True)
    return conf


def _funasr_model(cls: Any, conf: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    model = cls(model_conf=copy.deepcopy(conf), vocab_size=9).eval()
    with torch.no_grad():  # non-trivial per-head/per-layer ALiBi scales, one clamped to 0
        scale = model.modality_encoders["AUDIO"].alibi_scale
        scale.uniform_(0.5, 1.5)
        scale.view(-1)[0] = -0.25
    return model


@pytest.mark.parametrize("variant", ["plus_like", "pre_ln_shared_scale"])
def test_matches_funasr_per_item(funasr_emotion2vec: Any, variant: str) -> None:  # noqa: F811
    conf = _variant(variant)
    theirs = _funasr_model(funasr_emotion2vec, conf)
    state = theirs.state_dict()
    assert any(k.startswith("modality_encoders.AUDIO.decoder.") for k in state)
    ours = build_model(conf, 9)
    load_strict(ours, state)  # strict: every key but the (dropped) decoder's
    gen = torch.Generator().manual_seed(0)
    for n in LENGTHS:
        wav = 0.1 * torch.randn(n, generator=gen)
        with torch.no_grad():
            source = F.layer_norm(wav, wav.shape) if conf["normalize"] else wav
            feats = theirs.extract_features(source[None], padding_mask=None)["x"]
            logits = theirs.proj(feats.mean(dim=1))
            out = ours(wav[None], torch.tensor([n]))
        assert out.feats.shape == feats.shape
        assert int(out.frame_lengths[0]) == feats.shape[1] == frames_for(n)
        assert torch.allclose(out.feats, feats, atol=1e-5, rtol=0), n
        assert torch.allclose(out.logits, logits, atol=1e-5, rtol=0), n
        assert torch.allclose(out.embedding, feats.mean(dim=1), atol=1e-5, rtol=0)


def test_strict_loading_names_missing_and_unexpected_keys() -> None:
    conf = model_conf("tiny")
    state = random_model(conf, seed=0).state_dict()
    broken = dict(state)
    del broken["blocks.1.attn.qkv.weight"]
    broken["blocks.9.attn.qkv.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatch) as err:
        load_strict(build_model(conf, 9), broken)
    assert "blocks.1.attn.qkv.weight" in str(err.value)
    assert "blocks.9.attn.qkv.weight" in str(err.value)


def test_padded_batch_equals_items_in_torch() -> None:
    model = random_model(model_conf("tiny"), seed=3)
    with torch.no_grad():  # a scale that upstream clamps to 0: masking must not turn NaN
        model.audio.alibi_scale[0, 0, 0] = -1.0
    gen = torch.Generator().manual_seed(1)
    items = [0.1 * torch.randn(n, generator=gen) for n in (16_000, 9_001, 401)]
    batch = torch.zeros(len(items), 16_000)
    for i, item in enumerate(items):
        batch[i, : len(item)] = item
    with torch.no_grad():
        padded = model(batch, torch.tensor([len(x) for x in items]))
        for i, item in enumerate(items):
            alone = model(item[None], torch.tensor([len(item)]))
            n = int(alone.frame_lengths[0])
            assert int(padded.frame_lengths[i]) == n
            assert torch.allclose(padded.logits[i], alone.logits[0], atol=1e-5, rtol=0)
            assert torch.allclose(padded.feats[i, :n], alone.feats[0], atol=1e-5, rtol=0)
            assert torch.all(padded.feats[i, n:] == 0)
    assert not torch.isnan(padded.frame_logits).any()


def test_unmasked_padding_would_change_results() -> None:
    """Guard that the masking test above can fail: padding read as audio changes logits."""
    model = random_model(model_conf("tiny"), seed=3)
    wav = 0.1 * torch.randn(1, 9_001, generator=torch.Generator().manual_seed(1))
    padded = F.pad(wav, (0, 7_000))
    with torch.no_grad():
        alone = model(wav, torch.tensor([9_001])).logits
        as_audio = model(padded, torch.tensor([16_001])).logits
    assert (alone - as_audio).abs().max() > 1e-3


def test_frame_formula() -> None:
    layers = parse_conv_spec("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]")
    assert layers == ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
    lengths = torch.arange(0, 20_000, 7)
    got = frame_count(lengths, layers)
    assert got.tolist() == [frames_for(int(n)) for n in lengths]
    model = random_model(model_conf("tiny"), seed=0)
    for n in (399, 400, 719, 720, 16_000):
        with torch.no_grad():
            cnn = model.audio.local_encoder(torch.zeros(1, n)) if n >= 400 else None
        assert (0 if cnn is None else cnn.shape[-1]) == frames_for(n)


class _NotATensor:
    pass


def test_checkpoint_unwrapping_and_pickle_refusal(tmp_path: Path) -> None:
    state = random_model(model_conf("tiny"), seed=0).state_dict()
    for wrapper in ("state_dict", "model_state_dict", "model"):
        path = tmp_path / f"{wrapper}.pt"
        torch.save({wrapper: state, "epoch": 3}, path)
        loaded = load_checkpoint(path)
        assert loaded.keys() == state.keys()
        load_strict(build_model(model_conf("tiny"), 9), loaded)
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": state, "extra": _NotATensor()}, pickled)
    with pytest.raises(RuntimeError, match="--allow-pickle"):
        load_checkpoint(pickled)
    assert load_checkpoint(pickled, allow_pickle=True).keys() == state.keys()


def test_random_model_is_seeded() -> None:
    a: Emotion2vec = random_model(model_conf("tiny"), seed=5)
    b: Emotion2vec = random_model(model_conf("tiny"), seed=5)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
