"""Encode mono float32 audio for responses: one-shot (`encode_audio`) or streamed
(`StreamingEncoder`, for TTS that sends audio while it is still being generated).

Choices (timings in ../shared/notes/audio-io.md): WAV and raw PCM are written by hand (a
44-byte header and `int16` bytes: ~0.1 ms for 10 s, 10x faster than soundfile); FLAC by
libsndfile one-shot; MP3, Opus and AAC by FFmpeg through PyAV (soundfile's Opus encoder is
~4x slower). Opus goes in an Ogg container (RFC 7845; what browsers and OpenAI clients
play). AAC goes out as ADTS (`audio/aac`): a stream of self-framed packets that plays in
browsers and players and, unlike MP4, can be streamed without fragmenting; its cost is
that ADTS cannot declare the encoder's 1024-sample priming, so players start with ~21 ms
of silence at 48 kHz. MP3 comes out ~0.45 dB quieter than its input (gain 0.950,
measured): LAME's default input scale of 0.95, which FFmpeg leaves as is, keeps headroom
against overshoot in decoders. Every path clips to [-1, 1] before scaling, so an overshoot is
clipped, never wrapped around to the other rail.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import cast

import av
import numpy as np
import soundfile as sf
import soxr

from service.errors import InvalidInput


class AudioFormat(StrEnum):
    WAV = "wav"
    FLAC = "flac"
    MP3 = "mp3"
    OPUS = "opus"
    AAC = "aac"
    PCM = "pcm"


MEDIA_TYPES: dict[str, str] = {
    AudioFormat.WAV: "audio/wav",
    AudioFormat.FLAC: "audio/flac",
    AudioFormat.MP3: "audio/mpeg",
    AudioFormat.OPUS: "audio/ogg",  # Ogg Opus, RFC 7845 section 9
    AudioFormat.AAC: "audio/aac",  # ADTS
    AudioFormat.PCM: "audio/pcm",  # 16-bit signed little-endian mono; rate told separately
}

_STREAM_SIZE = 0xFFFFFFFF
"""RIFF and data sizes of a WAV whose length is not known yet (as OpenAI's API streams)."""


@dataclass(frozen=True)
class _AvCodec:
    container: str
    codec: str
    bit_rate: int
    rates: tuple[int, ...] | None
    """Sample rates the codec takes; others are resampled (None: any rate)."""

    def rate_for(self, rate: int) -> int:
        if self.rates is None or rate in self.rates:
            return rate
        higher = [r for r in self.rates if r >= rate]
        return min(higher) if higher else max(self.rates)


_AV_CODECS = {
    AudioFormat.MP3: _AvCodec("mp3", "libmp3lame", 128_000,
                              (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)),
    AudioFormat.OPUS: _AvCodec("ogg", "libopus", 64_000, (8000, 12000, 16000, 24000, 48000)),
    AudioFormat.AAC: _AvCodec("adts", "aac", 96_000,
                              (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000,
                               64000, 88200, 96000)),
    AudioFormat.FLAC: _AvCodec("flac", "flac", 0, None),  # streaming FLAC only
}
_OGG_PAGE_US = "100000"
"""Ogg pages of <= 100 ms instead of FFmpeg's 1 s, so a streamed Opus plays sooner."""


_PCM_BLOCK = 1 << 18
"""Samples converted at a time: float temporaries of 1 MB, not of the whole answer."""


def pcm16_bytes(samples: np.ndarray, header: bytes = b"") -> bytes:
    """float32 -> `header` + 16-bit little-endian PCM, clipped first so +1.2 becomes +1,
    not -0.8. Built in one buffer, a block at a time: a whole-file answer costs its
    int16 bytes once more, not three float copies and two byte copies (351 MB of WAV
    cost +4.1 GB of RSS before the output cap and this)."""
    x = np.asarray(samples, dtype=np.float32)
    out = np.empty(len(header) // 2 + len(x), "<i2")
    assert len(header) % 2 == 0
    out[: len(header) // 2] = np.frombuffer(header, "<i2")
    pcm = out[len(header) // 2 :]
    scratch = np.empty(min(len(x), _PCM_BLOCK), np.float32)
    for start in range(0, len(x), _PCM_BLOCK):
        block = x[start : start + _PCM_BLOCK]
        tmp = scratch[: len(block)]
        np.clip(block, -1.0, 1.0, out=tmp)
        np.multiply(tmp, 32767.0, out=tmp)
        np.rint(tmp, out=tmp)
        pcm[start : start + len(block)] = tmp
    return out.tobytes()


def wav_header(sample_rate: int, data_bytes: int, channels: int = 1) -> bytes:
    """The canonical 44-byte PCM16 WAV header."""
    block = 2 * channels
    riff = min(36 + data_bytes, _STREAM_SIZE)
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate,
                                    sample_rate * block, block, 16)
            + b"data" + struct.pack("<I", min(data_bytes, _STREAM_SIZE)))


def wav_stream_header(sample_rate: int, channels: int = 1) -> bytes:
    """Header for a WAV of unknown length: both sizes 0xFFFFFFFF; readers take the data
    up to the end of the stream."""
    header = bytearray(wav_header(sample_rate, 0, channels))
    header[4:8] = header[40:44] = struct.pack("<I", _STREAM_SIZE)
    return bytes(header)


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """Mono float32 -> a whole file in `fmt` (one of AudioFormat)."""
    fmt = _parse_format(fmt)
    _check_rate(sample_rate)
    samples = _mono(samples)
    if fmt == AudioFormat.PCM:
        return pcm16_bytes(samples)
    if fmt == AudioFormat.WAV:
        return pcm16_bytes(samples, wav_header(sample_rate, 2 * len(samples)))
    if fmt == AudioFormat.FLAC:
        buf = io.BytesIO()
        sf.write(buf, np.clip(samples, -1.0, 1.0), sample_rate, format="FLAC",
                 subtype="PCM_16")
        return buf.getvalue()
    # A seekable buffer lets the MP3 muxer go back and write its Xing/LAME header, which
    # tells decoders the exact length and the encoder delay to trim (gapless).
    buf = io.BytesIO()
    encoder = _AvEncoder(_AV_CODECS[fmt], sample_rate, buf)
    encoder.write(samples)
    encoder.finish()
    return buf.getvalue()


class StreamingEncoder:
    """Encode audio chunk by chunk; each call returns the bytes ready to send.

    Concatenating every `write` and the final `flush` gives a playable file. WAV starts
    with `wav_stream_header`; MP3 has no Xing header (it would need seeking back), so
    decoders keep the encoder's ~1105-sample priming; FLAC's header leaves the length
    unknown (STREAMINFO total_samples 0: libsndfile then takes the length as unbounded
    and soundfile cannot read the file at all; PyAV/FFmpeg can). Only Ogg Opus states
    its exact length (the last page's granule position): `states_length`. `flush()`
    ends the stream.
    """

    LENGTH_STATED = frozenset({AudioFormat.OPUS})

    def __init__(self, fmt: str, sample_rate: int) -> None:
        self.format = _parse_format(fmt)
        _check_rate(sample_rate)
        self.sample_rate = sample_rate
        self.media_type = MEDIA_TYPES[self.format]
        self.states_length = self.format in self.LENGTH_STATED
        """Whether the streamed file itself says how long it is."""
        self._header_sent = False
        self._closed = False
        self._sink: _ChunkSink | None = None
        self._av: _AvEncoder | None = None
        if self.format in _AV_CODECS:
            self._sink = _ChunkSink()
            self._av = _AvEncoder(_AV_CODECS[self.format], sample_rate, self._sink)

    def write(self, samples: np.ndarray) -> bytes:
        if self._closed:
            raise RuntimeError("write() after flush(): the stream has ended")
        samples = _mono(samples)
        if self._av is not None and self._sink is not None:
            self._av.write(samples)
            return self._sink.take()
        return self._header() + pcm16_bytes(samples)

    def flush(self) -> bytes:
        """End the stream: the encoder's buffered tail and the container's trailer."""
        if self._closed:
            return b""
        self._closed = True
        if self._av is not None and self._sink is not None:
            self._av.finish()
            return self._sink.take()
        return self._header()

    def _header(self) -> bytes:
        if self.format != AudioFormat.WAV or self._header_sent:
            return b""
        self._header_sent = True
        return wav_stream_header(self.sample_rate)


class _ChunkSink:
    """A write-only file for FFmpeg: no seek, so muxers never go back over sent bytes."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class _AvEncoder:
    """One FFmpeg encoder + muxer fed mono float32; resamples (soxr, streaming) when the
    codec does not take the input rate. PyAV re-chunks input to the codec's frame size."""

    def __init__(self, spec: _AvCodec, sample_rate: int, sink: io.BytesIO | _ChunkSink) -> None:
        self.rate = spec.rate_for(sample_rate)
        self._resampler = None
        if self.rate != sample_rate:
            self._resampler = soxr.ResampleStream(sample_rate, self.rate, 1,
                                                  dtype="float32", quality="HQ")
        options = {"flush_packets": "1", "fflags": "+bitexact"}
        if spec.container == "ogg":
            options["page_duration"] = _OGG_PAGE_US
        self._out = av.open(sink, mode="w", format=spec.container,
                            container_options=options, buffer_size=4096)
        self._stream = cast(av.AudioStream, self._out.add_stream(spec.codec, rate=self.rate,
                                                                  layout="mono"))
        if spec.bit_rate:
            self._stream.bit_rate = spec.bit_rate
        self._pts = 0

    def write(self, samples: np.ndarray) -> None:
        x = np.clip(samples, -1.0, 1.0)
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x, last=False)
        self._encode(x)

    def finish(self) -> None:
        if self._resampler is not None:
            self._encode(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        for packet in self._stream.encode(None):
            self._out.mux(packet)
        self._out.close()

    def _encode(self, x: np.ndarray) -> None:
        if len(x) == 0:
            return
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x, np.float32)[None, :],
                                           format="fltp", layout="mono")
        frame.sample_rate = self.rate
        frame.time_base = Fraction(1, self.rate)
        frame.pts = self._pts
        self._pts += len(x)
        for packet in self._stream.encode(frame):
            self._out.mux(packet)


def _parse_format(fmt: str) -> AudioFormat:
    try:
        return AudioFormat(str(fmt).lower())
    except ValueError:
        known = ", ".join(f.value for f in AudioFormat)
        raise InvalidInput(f"unknown audio format {fmt!r}; known: {known}") from None


def _check_rate(sample_rate: int) -> None:
    if not 1 <= sample_rate <= 768_000:
        raise ValueError(f"sample rate {sample_rate} Hz is not usable")


def _mono(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected mono 1-D samples, got shape {x.shape}")
    return x
