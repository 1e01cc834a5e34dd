"""Decode + resample per upload format: the service's `decode_audio` vs `librosa.load`.

Each format holds the same 10 s of 44.1 kHz stereo; both sides produce 48 kHz mono
float32 from bytes in memory. librosa is only the baseline (it reads through soundfile
from a BytesIO; formats libsndfile cannot open show n/a, since librosa's audioread fallback
needs a path and a system ffmpeg). Medians over --runs, both measured in this one run.

    .venv/bin/python bench/bench_decode.py [--runs 9] [--seconds 10]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.audio import decode_audio
from tests.audio_fixtures import make_tone, write_audio

FORMATS = ("wav", "flac", "ogg_vorbis", "opus", "mp3", "m4a", "aac_adts", "webm_opus")
TARGET = 48000


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up: first-call costs (imports, codec tables) are not per-request costs
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def librosa_ms(data: bytes, runs: int) -> float | None:
    import librosa

    def load() -> object:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return librosa.load(io.BytesIO(data), sr=TARGET, mono=True)

    try:
        load()
    except Exception:  # librosa has no in-memory reader for this format
        return None
    return median_ms(load, runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    source = make_tone(args.seconds, 44100, channels=2)
    print(f"{args.seconds:g} s 44.1 kHz stereo -> {TARGET // 1000} kHz mono, "
          f"median of {args.runs} runs (ms)\n")
    print("| format | bytes | decode_audio | librosa.load | librosa / service |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for fmt in FORMATS:
        data = write_audio(source, 44100, fmt)
        ours = median_ms(lambda data=data: decode_audio(
            data, target_rate=TARGET, max_seconds=3600), args.runs)
        base = librosa_ms(data, args.runs)
        base_txt = f"{base:.1f}" if base is not None else "n/a"
        ratio = f"{base / ours:.2f}x" if base is not None else "-"
        print(f"| {fmt} | {len(data):,} | {ours:.1f} | {base_txt} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
