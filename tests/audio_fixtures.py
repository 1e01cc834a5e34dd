"""Audio files made in the test, in every format uploads come in, plus broken ones.

Written with soundfile and PyAV directly (not with `service.audio.encode`), so the decoder
tests do not depend on the service's own encoder. Reused by the endpoint tests (CLAP,
emotion): `write_audio(make_tone(1.0), 48000, "mp3")` gives bytes to post.
"""

from __future__ import annotations

import io
import struct
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from typing import Any

import av
import numpy as np
import soundfile as sf

FORMATS = ("wav", "flac", "ogg_vorbis", "opus", "mp3", "m4a", "m4a_faststart",
           "aac_adts", "webm_opus")
LOSSLESS = ("wav", "flac")
CONTENT_TYPES = {
    "wav": "audio/wav", "flac": "audio/flac", "ogg_vorbis": "audio/ogg", "opus": "audio/ogg",
    "mp3": "audio/mpeg", "m4a": "audio/mp4", "m4a_faststart": "audio/mp4",
    "aac_adts": "audio/aac", "webm_opus": "audio/webm",
}
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def make_tone(seconds: float, rate: int = 48000, channels: int = 1,
              amplitude: float = 0.5) -> np.ndarray:
    """(frames, channels) float32: channel k glides up from 440 * (1 + k/2) Hz by 25 % a
    second, with a slow amplitude wobble, so that no lag, gap or channel mix-up can pass
    for a match (a steady sine matches itself one period later)."""
    t = np.arange(round(seconds * rate)) / rate
    wobble = 0.75 + 0.25 * np.sin(2 * np.pi * 3 * t)
    cols = [amplitude * wobble * np.sin(2 * np.pi * 440 * (1 + k / 2) * (t + 0.125 * t**2))
            for k in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


def write_audio(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    """Encode (frames, channels) or (frames,) float32 in one of FORMATS."""
    if samples.ndim == 1:
        samples = samples[:, None]
    if fmt in ("wav", "flac", "ogg_vorbis"):
        sf_format, subtype = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"),
                              "ogg_vorbis": ("OGG", "VORBIS")}[fmt]
        buf = io.BytesIO()
        sf.write(buf, samples, rate, format=sf_format, subtype=subtype)
        return buf.getvalue()
    if fmt == "m4a_faststart":
        return _faststart_m4a(samples, rate)
    opus_rate = rate if rate in _OPUS_RATES else 48000
    args: dict[str, Any] = {
        "opus": dict(container="ogg", codec="libopus", codec_rate=opus_rate),
        "mp3": dict(container="mp3", codec="libmp3lame"),
        "m4a": dict(container="ipod", codec="aac"),
        "aac_adts": dict(container="adts", codec="aac"),
        # a browser's MediaRecorder writes WebM as a live stream: no seeking back
        "webm_opus": dict(container="webm", codec="libopus", codec_rate=opus_rate,
                          seekable=False),
    }[fmt]
    return av_write(samples, rate, **args)


def _faststart_m4a(samples: np.ndarray, rate: int) -> bytes:
    """moov before mdat. FFmpeg's faststart pass re-reads its output by name, so this one
    fixture goes through a temporary file (the service itself never does)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/a.m4a"
        planes = np.ascontiguousarray(samples.T)
        layout = "mono" if planes.shape[0] == 1 else "stereo"
        with av.open(path, mode="w", format="ipod", options={"movflags": "+faststart"}) as out:
            stream = out.add_stream("aac", rate=rate, layout=layout)
            frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                out.mux(packet)
        with open(path, "rb") as f:
            return f.read()


class _Sink:
    """A write-only file: FFmpeg cannot seek back to patch headers (live streaming)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)


def av_write(samples: np.ndarray, rate: int, *, container: str, codec: str,
             codec_rate: int | None = None, options: dict[str, str] | None = None,
             seekable: bool = True) -> bytes:
    """Encode (frames, channels) float32 with FFmpeg (PyAV converts rate and format)."""
    planes = np.ascontiguousarray(samples.T)
    chunks = (planes[:, i:i + 4096] for i in range(0, planes.shape[1], 4096))
    return av_write_chunks(chunks, rate, planes.shape[0], container=container, codec=codec,
                           codec_rate=codec_rate, options=options, seekable=seekable)


def av_write_chunks(chunks: Iterable[np.ndarray], rate: int, channels: int, *,
                    container: str, codec: str, codec_rate: int | None = None,
                    options: dict[str, str] | None = None, seekable: bool = True) -> bytes:
    """Encode (channels, n) float32 chunks; a generator keeps an hour of audio cheap."""
    sink: io.BytesIO | _Sink = io.BytesIO() if seekable else _Sink()
    layout = "mono" if channels == 1 else "stereo"
    out = av.open(sink, mode="w", format=container, options=options or {})
    stream = out.add_stream(codec, rate=codec_rate or rate, layout=layout)
    pts = 0
    for chunk in chunks:
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk, np.float32),
                                           format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = pts
        frame.time_base = Fraction(1, rate)
        pts += chunk.shape[1]
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    return sink.getvalue() if isinstance(sink, io.BytesIO) else b"".join(sink.parts)


# -- comparing a decoded signal with its source ---------------------------------------

@dataclass(frozen=True)
class Similarity:
    correlation: float
    snr_db: float
    lag: int
    """Samples by which `got` trails `ref` (codec priming that the container does not
    declare, e.g. AAC in ADTS)."""


def compare(ref: np.ndarray, got: np.ndarray, max_lag: int = 0) -> Similarity:
    """Best-aligned correlation and SNR of `got` against `ref` over their common length."""
    best = Similarity(-1.0, -np.inf, 0)
    for lag in range(-max_lag, max_lag + 1):
        a, b = (ref, got[lag:]) if lag >= 0 else (ref[-lag:], got)
        n = min(len(a), len(b))
        if n == 0:
            continue
        a, b = a[:n].astype(np.float64), b[:n].astype(np.float64)
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        corr = float(a @ b / denom) if denom > 0 else 0.0
        if corr > best.correlation:
            noise = np.sum((a - b) ** 2)
            snr = float(10 * np.log10(np.sum(a**2) / noise)) if noise > 0 else np.inf
            best = Similarity(corr, snr, lag)
    return best


def best_lag(ref: np.ndarray, got: np.ndarray, max_lag: int) -> int:
    """Lag of the cross-correlation peak (per overlapping sample, so a long overlap does
    not win by its length alone), computed with FFTs."""
    n = min(len(ref), len(got))
    size = 1 << (2 * n).bit_length()
    spec = np.fft.rfft(got[:n], size) * np.conj(np.fft.rfft(ref[:n], size))
    xc = np.fft.irfft(spec, size)
    lags = np.r_[np.arange(0, max_lag + 1), np.arange(-max_lag, 0)]
    overlap = n - np.abs(lags)
    return int(lags[np.argmax(xc[lags] / overlap)])


# -- broken and hostile inputs --------------------------------------------------------

def wav_header(*, rate: int, channels: int, bits: int = 16, data_bytes: int,
               riff_bytes: int | None = None, format_tag: int = 1) -> bytes:
    """A WAV header (PCM unless `format_tag` says otherwise) with whatever (possibly lying)
    fields a test wants."""
    block = channels * bits // 8
    byte_rate = min(rate * block, 0xFFFFFFFF)
    fmt = struct.pack("<HHIIHH", format_tag, channels, rate, byte_rate, block & 0xFFFF, bits)
    riff = riff_bytes if riff_bytes is not None else 4 + 8 + len(fmt) + 8 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt))
            + fmt + b"data" + struct.pack("<I", data_bytes))


def random_bytes(n: int = 64_000, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def tiny_png() -> bytes:
    """A real 1x1 PNG (signature, IHDR, IDAT, IEND)."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


@cache
def silent_flac(seconds: int = 3600, rate: int = 16000, *, hide_length: bool = False) -> bytes:
    """`seconds` of digital silence as FLAC: an hour is ~180 KB but 230 MB as float32.

    hide_length zeroes STREAMINFO's total-samples field, as in a FLAC written to a pipe,
    so the header says nothing about the length."""
    buf = io.BytesIO()
    block = np.zeros(rate * 60, np.int16)
    with sf.SoundFile(buf, "w", rate, 1, format="FLAC", subtype="PCM_16") as f:
        whole, rest = divmod(seconds * rate, len(block))
        for _ in range(whole):
            f.write(block)
        f.write(block[:rest])
    data = bytearray(buf.getvalue())
    if hide_length:
        # STREAMINFO body starts at byte 8; its 36-bit total-samples field is the low
        # nibble of byte 21 and bytes 22..25
        data[21] &= 0xF0
        data[22:26] = b"\x00\x00\x00\x00"
    return bytes(data)


@cache
def silent_mka_flac(seconds: int = 3600, rate: int = 16000) -> bytes:
    """Silence as FLAC in Matroska: takes the FFmpeg path, with a streaming-style header."""
    block = np.zeros((1, rate * 10), np.float32)
    chunks = (block for _ in range(seconds // 10))
    return av_write_chunks(chunks, rate, 1, container="matroska", codec="flac",
                           seekable=False)


@cache
def silent_opus(seconds: int = 3600) -> bytes:
    """`seconds` of silence as Ogg Opus (~0.6 MB an hour), made in well under a second:
    one encoded 60 ms silent packet, muxed over and over (encoding an hour takes ~30 s)."""
    rate, frame = 48000, 2880
    scratch = av.open(io.BytesIO(), mode="w", format="ogg")
    encoder = scratch.add_stream("libopus", rate=rate, layout="mono",
                                 options={"frame_duration": "60"})
    silence = av.AudioFrame.from_ndarray(np.zeros((1, rate), np.float32), format="fltp",
                                         layout="mono")
    silence.sample_rate, silence.pts, silence.time_base = rate, 0, Fraction(1, rate)
    packets = [*encoder.encode(silence), *encoder.encode(None)]
    steady = bytes(packets[len(packets) // 2])  # past the encoder's start-up
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=rate, layout="mono")
        stream.codec_context.extradata = encoder.codec_context.extradata  # the OpusHead
        for i in range(seconds * rate // frame):
            packet = av.Packet(steady)
            packet.stream = stream
            packet.pts = packet.dts = i * frame
            packet.duration = frame
            packet.time_base = Fraction(1, rate)
            out.mux(packet)
    return buf.getvalue()
