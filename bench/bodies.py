"""Request bodies for the load tests, prebuilt into files that wrk's Lua scripts and the
open-loop client both read, so every client (and every peer server) posts the same bytes.

Layout of one endpoint's folder (`<out>/<endpoint>/`):
  content_type   the Content-Type header (multipart boundary included)
  path           the URL path to POST to
  index          body file names, one a line (clients cycle through them)
  body_<n>.bin   the request bodies

Audio comes from real speech (`../shared/data/speech`, RAVDESS clips of 3-4.5 s at 48 kHz)
when present — concatenated or cropped to give the mixed lengths issue 4 asks for — and is
generated otherwise (a wobbling tone plus noise, so no window is silent).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from service.audio.clap_features import window_starts

REPO = Path(__file__).resolve().parents[1]
SPEECH_DIR = REPO.parent / "shared" / "data" / "speech"
BOUNDARY = "audioserveBenchBoundary7f3a"
RATE = 48_000
EMOTION_SECONDS = (2.0, 4.0, 8.0, 12.0)
CLASSIFY_SECONDS = (4.0, 4.0, 8.0, 12.0)
CLASSIFY_LABELS = ("speech", "dog barking", "music", "car horn", "rain")
TTS_TEXTS = (
    "Hello from audioserve.",
    "The quick brown fox jumps over the lazy dog.",
    "Batching shares one forward pass across many concurrent requests.",
)


@dataclass(frozen=True)
class Endpoint:
    """What a client needs to post one endpoint's bodies."""

    name: str
    path: str
    content_type: str
    folder: Path
    bodies: tuple[Path, ...]
    unit: str = "requests"  # what the raw ceiling counts: CLAP windows, emotion audio seconds
    units: tuple[float, ...] = ()  # that unit per body

    @property
    def units_per_request(self) -> float:
        return sum(self.units) / len(self.units) if self.units else 1.0

    def read_bodies(self) -> list[bytes]:
        return [p.read_bytes() for p in self.bodies]


def speech_source() -> str:
    return "real speech (../shared/data/speech)" if _speech_files() else "generated tones"


def _speech_files() -> list[Path]:
    return sorted(SPEECH_DIR.glob("*.flac")) if SPEECH_DIR.is_dir() else []


def _generated(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = np.sin(2 * np.pi * rng.uniform(150, 900) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * t))
    return (0.2 * tone + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def speech_clip(seconds: float, seed: int) -> np.ndarray:
    """Mono float32 at 48 kHz of exactly `seconds`: real clips joined end to end (starting
    at a seed-chosen clip) and cropped, or generated audio when the data is absent."""
    files = _speech_files()
    if not files:
        return _generated(seconds, seed)
    want = int(seconds * RATE)
    parts: list[np.ndarray] = []
    have, i = 0, seed
    while have < want:
        data, rate = sf.read(files[i % len(files)], dtype="float32", always_2d=True)
        mono = data.mean(axis=1)
        if rate != RATE:  # the shared clips are 48 kHz; resample crudely if one is not
            mono = np.interp(np.arange(0, len(mono), rate / RATE), np.arange(len(mono)), mono)
        parts.append(mono.astype(np.float32))
        have += len(mono)
        i += 1
    return np.concatenate(parts)[:want]


def flac_bytes(samples: np.ndarray, rate: int = RATE) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def multipart(audio: bytes, fields: list[tuple[str, str]], filename: str = "clip.flac") -> bytes:
    """A multipart/form-data body: the `file` part, then plain text fields (repeatable)."""
    out = io.BytesIO()
    out.write(f"--{BOUNDARY}\r\n".encode())
    out.write(f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'.encode())
    out.write(b"Content-Type: audio/flac\r\n\r\n")
    out.write(audio)
    out.write(b"\r\n")
    for name, value in fields:
        out.write(f"--{BOUNDARY}\r\n".encode())
        out.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value.encode())
        out.write(b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


def _write(folder: Path, name: str, path: str, content_type: str, bodies: list[bytes],
           unit: str = "requests", units: tuple[float, ...] = ()) -> Endpoint:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for n, body in enumerate(bodies):
        f = folder / f"body_{n}.bin"
        f.write_bytes(body)
        files.append(f)
    (folder / "content_type").write_text(content_type + "\n")
    (folder / "path").write_text(path + "\n")
    (folder / "index").write_text("".join(f.name + "\n" for f in files))
    (folder / "meta.json").write_text(json.dumps({"unit": unit, "units": list(units)}) + "\n")
    return Endpoint(name, path, content_type, folder, tuple(files), unit, units)


def clap_windows(seconds: float) -> int:
    """10 s windows the service embeds for a clip (none of these clips is silent)."""
    return len(window_starts(int(seconds * RATE), 10 * RATE))


def build_classify(out: Path) -> Endpoint:
    labels = [("labels", label) for label in CLASSIFY_LABELS]
    bodies = [multipart(flac_bytes(speech_clip(s, seed=7 * i)), labels)
              for i, s in enumerate(CLASSIFY_SECONDS)]
    return _write(out / "classify", "classify", "/classify",
                  f"multipart/form-data; boundary={BOUNDARY}", bodies, "windows",
                  tuple(float(clap_windows(s)) for s in CLASSIFY_SECONDS))


def build_emotion(out: Path) -> Endpoint:
    bodies = [multipart(flac_bytes(speech_clip(s, seed=5 * i + 1)), [])
              for i, s in enumerate(EMOTION_SECONDS)]
    return _write(out / "emotion", "emotion", "/emotion",
                  f"multipart/form-data; boundary={BOUNDARY}", bodies, "audio_s",
                  EMOTION_SECONDS)


def build_tts(out: Path, max_new_tokens: int = 64) -> Endpoint:
    """JSON bodies with fixed seeds; max_new_tokens bounds the work of random-weight packs,
    which seldom emit the stop token."""
    bodies = [json.dumps({"text": t, "seed": 40 + i, "max_new_tokens": max_new_tokens}).encode()
              for i, t in enumerate(TTS_TEXTS)]
    return _write(out / "tts", "tts", "/tts", "application/json", bodies)


BUILDERS = {"classify": build_classify, "emotion": build_emotion, "tts": build_tts}


def build(out: Path, endpoints: list[str]) -> dict[str, Endpoint]:
    return {name: BUILDERS[name](out) for name in endpoints}
