"""Decode + resample per upload format: the service's `decode_audio` vs the raw library
calls (the floor) and vs `librosa.load`.

Each format holds the same 10 s of 44.1 kHz stereo; every side produces 48 kHz mono
float32 from bytes in memory. The floor is what the libraries cost with nothing around
them: `soundfile.read` (WAV, FLAC) or PyAV's decode loop with `frame.to_ndarray()` (the
rest), the channel mean, then `soxr.resample` HQ, with none of the service's limits and
checks. librosa is a second baseline (it reads through soundfile from a BytesIO; formats
libsndfile cannot open show n/a, since librosa's audioread fallback needs a path and a
system ffmpeg). Medians of per-call CPU time over --runs, all measured in this one run.

    .venv/bin/python bench/bench_decode.py [--runs 9] [--seconds 10]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.audio.decode import decode_audio
from tests.audio_fixtures import make_tone, write_audio

FORMATS = ("wav", "flac", "ogg_vorbis", "opus", "mp3", "m4a", "aac_adts", "webm_opus")
TARGET = 48000


def median_ms(fn: Callable[[], object], runs: int) -> float:
    """Median CPU ms of this thread per call (the machine is shared: wall time would carry
    the other jobs' load)."""
    fn()  # warm-up: first-call costs (imports, codec tables) are not per-request costs
    times = []
    for _ in range(runs):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
    return 1000 * statistics.median(times)


def floor_decode(data: bytes) -> np.ndarray:
    """The raw library calls the service's decoder wraps (see the module note)."""
    if data[:4] in (b"RIFF", b"fLaC"):
        planes = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)[0].T
        rate = sf.info(io.BytesIO(data)).samplerate
    else:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            chunks = []
            for frame in container.decode(stream):
                arr = frame.to_ndarray()
                if not frame.format.is_planar:
                    arr = arr.reshape(-1, frame.layout.nb_channels).T
                chunks.append(arr)
            planes = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    mono = np.array(planes[0], dtype=np.float32)  # channel by channel: a strided mean
    for plane in planes[1:]:                       # over the short axis is ~8x slower
        mono += plane
    mono *= np.float32(1 / len(planes))
    return np.asarray(soxr.resample(mono, rate, TARGET, quality="HQ"))


def librosa_ms(data: bytes, runs: int) -> float | None:
    if importlib.util.find_spec("librosa") is None:
        return None
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
          f"median CPU ms of {args.runs} runs\n")
    print("| format | bytes | decode_audio | floor (raw library calls) | service / floor "
          "| librosa.load | librosa / service |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for fmt in FORMATS:
        data = write_audio(source, 44100, fmt)
        ours = median_ms(lambda data=data: decode_audio(
            data, target_rate=TARGET, max_seconds=3600), args.runs)
        floor = median_ms(lambda data=data: floor_decode(data), args.runs)
        base = librosa_ms(data, args.runs)
        base_txt = f"{base:.1f}" if base is not None else "n/a"
        ratio = f"{base / ours:.2f}x" if base is not None else "-"
        print(f"| {fmt} | {len(data):,} | {ours:.1f} | {floor:.1f} | {ours / floor:.2f}x "
              f"| {base_txt} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
