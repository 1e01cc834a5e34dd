"""A live stream's CLAP log-mel per 10 s window: whole (cf.window_features, as before) vs
through the stream's frame cache (service.audio.logmel_cache), for a few hops.

    python -m bench.bench_logmel_cache                 # real speech from ../shared/data
    python -m bench.bench_logmel_cache --hops 1 2 5 --seconds 60

The stream is 48 kHz (the only rate whose windows the cache serves): real speech clips
end to end (synthetic noise where ../shared/data is absent). Each window is a fresh copy,
as the live buffer cuts it, and goes both ways in turn; ms are wall-clock medians per
window, and the features are checked equal.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import soundfile as sf

from bench.bodies import SPEECH_DIR
from service.audio import clap_features as cf
from service.audio.logmel_cache import LogMelCache


def hub_config() -> cf.MelConfig:
    """The `laion/clap-htsat-unfused` front-end, as an exported pack has it."""
    from transformers import ClapFeatureExtractor

    from export.clap import HUB_UNFUSED_PREPROCESSOR, preprocessing_constants

    extractor = ClapFeatureExtractor(**HUB_UNFUSED_PREPROCESSOR)
    return cf.MelConfig.from_constants(preprocessing_constants(extractor))


def stream(seconds: float, rate: int) -> tuple[np.ndarray, str]:
    """Real speech end to end to `seconds`, or noise where the clips are absent."""
    n = round(seconds * rate)
    files = sorted(SPEECH_DIR.glob("*.flac"))
    if not files:
        rng = np.random.default_rng(0)
        return (0.1 * rng.standard_normal(n)).astype(np.float32), "noise"
    parts, total = [], 0
    for path in files:
        samples, file_rate = sf.read(path, dtype="float32")
        assert file_rate == rate, f"{path}: {file_rate} Hz"
        parts.append(samples)
        total += len(samples)
        if total >= n:
            break
    return np.tile(np.concatenate(parts), n // total + 1)[:n], "speech"


def measure(cfg: cf.MelConfig, audio: np.ndarray, hop_s: float) -> dict[str, float]:
    """Median ms per window both ways, and the share of frames the cache copied."""
    size, hop = cfg.max_length_samples, round(hop_s * cfg.sample_rate)
    cache = LogMelCache(cfg)
    whole_ms, cached_ms = [], []
    starts = range(0, len(audio) - size + 1, hop)
    for start in starts:
        span = cf.WindowSpan(0, 0, size, 0.0, size / cfg.sample_rate, False)
        a, b = audio[start:start + size].copy(), audio[start:start + size].copy()
        t0 = time.perf_counter()
        whole = cf.window_features(a, span, cfg)
        t1 = time.perf_counter()
        cached = cache.window_features(b, start)
        t2 = time.perf_counter()
        assert np.array_equal(whole, cached), f"window at {start}: features differ"
        whole_ms.append((t1 - t0) * 1000)
        cached_ms.append((t2 - t1) * 1000)
    frames = len(starts) * cf.frame_count(size, cfg)
    return {"windows": len(starts), "whole_ms": statistics.median(whole_ms[1:]),
            "cached_ms": statistics.median(cached_ms[1:]),
            "reused": cache.reused_frames / frames}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hops", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--seconds", type=float, default=40.0, help="stream length")
    args = p.parse_args(argv)
    cfg = hub_config()
    audio, kind = stream(args.seconds, cfg.sample_rate)
    print(f"CLAP log-mel per 10 s window of a {args.seconds:g} s 48 kHz {kind} stream "
          "(median, first window left out; features equal to the bit):\n")
    print("| hop s | windows | whole ms | cached ms | cached / whole | frames copied |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for hop_s in args.hops:
        r = measure(cfg, audio, hop_s)
        print(f"| {hop_s:g} | {r['windows']:.0f} | {r['whole_ms']:.2f} | "
              f"{r['cached_ms']:.2f} | {r['cached_ms'] / r['whole_ms']:.2f} | "
              f"{r['reused']:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
