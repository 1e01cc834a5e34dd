"""The numpy log-mel and windowing vs transformers' ClapFeatureExtractor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.audio import clap_features as cf
from service.audio.decode import decode_audio
from service.runtime.packs import ModelPack
from tests.clap_fixtures import (
    SR,
    WINDOW,
    extractor_from_pack,
    make_clip,
    reference_windows,
)

pytest_plugins = ("tests.clap_fixtures",)

SHARED_SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "speech"
DB_TOLERANCE = 1e-3


def _ours(samples: np.ndarray, cfg: cf.MelConfig) -> np.ndarray:
    span = cf.plan_windows(samples, cfg)[0]
    return cf.window_features(samples, span, cfg)[0]


def _theirs(extractor: object, samples: np.ndarray) -> np.ndarray:
    out = extractor(samples, sampling_rate=SR, return_tensors="np")  # type: ignore[operator]
    return np.asarray(out["input_features"])[0, 0]


@pytest.mark.parametrize("seconds", [0.37, 3.3, 10.0])
def test_log_mel_matches_extractor(clap_pack: ModelPack, seconds: float) -> None:
    cfg = cf.MelConfig.from_constants(clap_pack.constants)
    extractor = extractor_from_pack(clap_pack)
    clip = make_clip(seconds, seed=int(seconds * 100))
    ours, theirs = _ours(clip, cfg), _theirs(extractor, clip)
    assert ours.shape == theirs.shape == (cfg.frames, cfg.n_mels)
    assert ours.dtype == np.float32
    assert np.abs(ours - theirs).max() <= DB_TOLERANCE


@pytest.mark.parametrize("padding", ["pad", "repeat"])
def test_other_padding_modes_match_extractor(clap_pack: ModelPack, padding: str) -> None:
    constants = {**clap_pack.constants, "padding": padding}
    cfg = cf.MelConfig.from_constants(constants)
    extractor = extractor_from_pack(clap_pack, padding=padding)
    clip = make_clip(2.1, seed=7)
    assert np.abs(_ours(clip, cfg) - _theirs(extractor, clip)).max() <= DB_TOLERANCE


def test_fusion_mode_uses_htk_filters_like_extractor(clap_pack: ModelPack) -> None:
    """truncation="fusion" switches the extractor to HTK mels without norm."""
    constants = {**clap_pack.constants, "mel_scale": "htk", "mel_norm": None}
    cfg = cf.MelConfig.from_constants(constants)
    extractor = extractor_from_pack(clap_pack, truncation="fusion")
    clip = make_clip(4.0, seed=8)
    assert np.abs(_ours(clip, cfg) - _theirs(extractor, clip)).max() <= DB_TOLERANCE


def test_filter_banks_equal_extractor(clap_pack: ModelPack) -> None:
    c = clap_pack.constants
    extractor = extractor_from_pack(clap_pack)
    args = (c["n_fft"], c["n_mels"], c["sample_rate"], c["f_min"], c["f_max"])
    slaney = cf.mel_filter_bank(*args, "slaney", "slaney")
    htk = cf.mel_filter_bank(*args, "htk", None)
    np.testing.assert_allclose(slaney, extractor.mel_filters_slaney, rtol=0, atol=1e-12)
    np.testing.assert_allclose(htk, extractor.mel_filters, rtol=0, atol=1e-12)
    assert cf.mel_filter_bank(*args, "slaney", "slaney") is slaney  # cached


def test_real_speech_clip_matches_extractor(clap_pack: ModelPack) -> None:
    files = sorted(SHARED_SPEECH.glob("*.flac"))
    if not files:
        pytest.skip(f"shared speech clips not found in {SHARED_SPEECH}")
    cfg = cf.MelConfig.from_constants(clap_pack.constants)
    audio = decode_audio(files[0].read_bytes(), target_rate=SR, max_seconds=60)
    extractor = extractor_from_pack(clap_pack)
    diff = np.abs(_ours(audio.samples, cfg) - _theirs(extractor, audio.samples)).max()
    assert diff <= DB_TOLERANCE


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, [0]),
        (WINDOW, [0]),
        (WINDOW + 1, [0, 1]),
        (3 * WINDOW, [0, WINDOW, 2 * WINDOW]),
        (int(2.5 * WINDOW), [0, WINDOW, int(1.5 * WINDOW)]),
    ],
)
def test_window_starts(n: int, expected: list[int]) -> None:
    assert cf.window_starts(n, WINDOW) == expected == reference_windows(n)


def test_every_window_is_full_length_real_audio(clap_pack: ModelPack) -> None:
    cfg = cf.MelConfig.from_constants(clap_pack.constants)
    spans = cf.plan_windows(np.ones(int(2.5 * WINDOW), np.float32), cfg)
    assert [(s.start, s.end) for s in spans] == [
        (0, WINDOW), (WINDOW, 2 * WINDOW), (int(1.5 * WINDOW), int(2.5 * WINDOW))
    ]
    assert spans[-1].end_s == pytest.approx(25.0)


def test_silent_windows_are_skipped_unless_all_are_silent(clap_pack: ModelPack) -> None:
    cfg = cf.MelConfig.from_constants(clap_pack.constants)
    loud = make_clip(10.0, seed=1)
    quiet = make_clip(10.0, seed=2, amplitude=1e-5)  # ~ -100 dBFS
    clip = np.concatenate([loud, quiet, make_clip(6.0, seed=3)])
    spans = cf.plan_windows(clip, cfg)
    assert [s.silent for s in spans] == [False, True, False]
    assert [s.index for s in cf.select_windows(spans)] == [0, 2]

    silent = np.zeros(int(1.5 * WINDOW), np.float32)
    spans = cf.plan_windows(silent, cfg)
    assert all(s.silent for s in spans)
    assert cf.select_windows(spans) == spans


def test_empty_or_multichannel_input_is_refused(clap_pack: ModelPack) -> None:
    cfg = cf.MelConfig.from_constants(clap_pack.constants)
    with pytest.raises(ValueError):
        cf.plan_windows(np.zeros(0, np.float32), cfg)
    with pytest.raises(ValueError):
        cf.plan_windows(np.zeros((2, 100), np.float32), cfg)
