"""A live stream's log-mel frame cache (service.audio.logmel_cache) on real speech: every
window it serves equals cf.window_features of the same samples, whether it reused frames
(48 kHz, hops of whole frames, skipped or late windows) or fell back to the whole log-mel
(16 kHz, hops of part of a frame, the first short windows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from service.audio import clap_features as cf
from service.audio.logmel_cache import LogMelCache
from service.live.windows import SlidingWindows, Window
from service.pipelines.base import LoadContext
from service.pipelines.clap import ClapPipeline
from service.runtime.metrics import Metrics
from service.runtime.packs import ModelPack
from service.runtime.sessions import RuntimeConfig
from service.settings import Settings
from tests.live_fixtures import to_rate

pytest_plugins = ("tests.clap_fixtures",)

CLAP_RATE = 48_000
TOLERANCE_DB = 1e-4
"""Held to: float32 rounding. Measured: 0 (the same bits) on every window here."""


@pytest.fixture(scope="module")
def speech48(shared_data: Path) -> np.ndarray:
    """~25 s of real speech at 48 kHz: clips end to end, 1 s of silence between them."""
    parts = []
    for path in sorted((shared_data / "speech").glob("*.flac"))[:6]:
        samples, rate = sf.read(path, dtype="float32")
        assert rate == CLAP_RATE
        parts += [np.zeros(CLAP_RATE, np.float32), samples]
    return np.concatenate(parts)


def _cfg(pack: ModelPack) -> cf.MelConfig:
    return cf.MelConfig.from_constants(pack.constants)


def _windows(audio: np.ndarray, rate: int, hop_s: float) -> list[Window]:
    """The live windows of a stream fed in 100 ms frames, the last one at finish."""
    windows = SlidingWindows(10.0, hop_s, rate, CLAP_RATE)
    step = rate // 10
    cut = [w for i in range(0, len(audio), step) for w in windows.push(audio[i:i + step])]
    return cut + windows.finish()


def _uncached(window: Window, cfg: cf.MelConfig) -> np.ndarray:
    n = len(window.samples)
    span = cf.WindowSpan(0, 0, n, 0.0, n / CLAP_RATE, False)
    return cf.window_features(window.samples, span, cfg)


def _worst(cache: LogMelCache, windows: list[Window], cfg: cf.MelConfig) -> float:
    """Max |cached - uncached| (dB) over the windows, served in this order."""
    worst = 0.0
    for w in windows:
        got, want = cache.window_features(w.samples, w.model_start), _uncached(w, cfg)
        assert got.shape == want.shape == (1, cfg.frames, cfg.n_mels)
        assert got.dtype == np.float32
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


@pytest.mark.parametrize(("hop_s", "reuses"), [(1.0, True), (2.0, True), (1.005, False)])
def test_sliding_windows_at_48k_equal_the_whole_log_mel(
        clap_pack: ModelPack, speech48: np.ndarray, hop_s: float, reuses: bool) -> None:
    """Hops of whole frames (480 samples) reuse the interior frames; 1.005 s (48240
    samples) shifts by part of a frame, so every window is computed whole."""
    cfg = _cfg(clap_pack)
    windows = _windows(speech48, CLAP_RATE, hop_s)
    assert any(len(w.samples) < cfg.max_length_samples for w in windows)  # padded ones
    cache = LogMelCache(cfg)
    worst = _worst(cache, windows, cfg)
    full = [w for w in windows if len(w.samples) == cfg.max_length_samples]
    share = cache.reused_frames / (len(full) * cfg.frames)
    print(f"hop {hop_s} s: {len(full)} full windows, {share:.0%} of their frames reused, "
          f"max |cached - whole| {worst:.1e} dB")
    assert worst <= TOLERANCE_DB
    if reuses:  # all but the first full window's interior frames less one hop's
        per_window = cfg.frames - 4 - round(hop_s * CLAP_RATE) // cfg.hop_length
        assert cache.reused_frames >= (len(full) - 2) * per_window
    else:
        assert cache.reused_frames == 0


def test_skipped_and_late_windows_still_equal(clap_pack: ModelPack,
                                              speech48: np.ndarray) -> None:
    """A window the models were too far behind for never reaches the cache (the next one
    shares fewer frames); a window prepared after its successor (two pool threads) is
    computed whole and does not replace the newer one."""
    cfg = _cfg(clap_pack)
    full = [w for w in _windows(speech48, CLAP_RATE, 2.0)
            if len(w.samples) == cfg.max_length_samples]
    assert len(full) >= 6
    skipped = [full[0], full[2], full[3], full[5]]
    late = [full[0], full[2], full[1], full[3]]
    for order in (skipped, late):
        cache = LogMelCache(cfg)
        assert _worst(cache, order, cfg) <= TOLERANCE_DB
        assert cache.reused_frames > 0
    cache = LogMelCache(cfg)
    _worst(cache, [full[2], full[1]], cfg)
    assert cache.reused_frames == 0  # full[1] is older than the kept full[2]
    _worst(cache, [full[3]], cfg)
    assert cache.reused_frames == cfg.frames - 4 - 200  # from full[2], one hop back


def test_resampled_windows_are_computed_whole(clap_pack: ModelPack,
                                              speech48: np.ndarray) -> None:
    """A 16 kHz stream: each window is resampled alone, its overlap differs from the last
    window's (see the module note), so none of its frames are reused."""
    cfg = _cfg(clap_pack)
    windows = _windows(to_rate((speech48 * 32767).astype(np.int16), 16_000)
                       .astype(np.float32) / 32768, 16_000, 2.0)
    assert all(w.model_start is None for w in windows)
    cache = LogMelCache(cfg)
    assert _worst(cache, windows, cfg) == 0.0
    assert cache.reused_frames == 0


def _pipeline(pack: ModelPack, features: str) -> ClapPipeline:
    settings = Settings(_env_file=None, warmup=False, clap_features=features)
    ctx = LoadContext(settings=settings, runtime=RuntimeConfig(provider="cpu"),
                      precision="fp32", metrics=Metrics())
    return ClapPipeline.load(pack, ctx)


def test_pipeline_prepares_live_windows_as_it_prepares_samples(
        clap_pack: ModelPack, speech48: np.ndarray) -> None:
    """embed_window's CPU stage (prepare_samples with the stream's cache) gives the items
    embed_samples' gives; graph features have no host log-mel to cache."""
    clap = _pipeline(clap_pack, "host")
    cache = clap.window_cache()
    assert cache is not None
    for w in _windows(speech48, CLAP_RATE, 2.0):
        got = clap.prepare_samples(w.samples, cache, w.model_start)
        want = clap.prepare_samples(w.samples)
        assert (got.spans, got.used) == (want.spans, want.used)
        for a, b in zip(got.items, want.items, strict=True):
            assert a.features is not None and b.features is not None
            np.testing.assert_array_equal(a.features, b.features)
    assert cache.reused_frames > 0
    assert _pipeline(clap_pack, "graph").window_cache() is None
