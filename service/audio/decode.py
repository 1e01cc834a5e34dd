"""Decode uploaded audio (bytes in memory) to mono float32 at the rate a model wants.

Design note. Headers cannot be trusted for length (a FLAC written to a pipe claims 2^63-1
frames, an MP3 without a Xing header reports a guess, a WAV may claim 4 GB), and a few
hundred KB of FLAC can expand to an hour of PCM. So every limit is enforced on what has
actually been decoded, block by block: the loop stops as soon as `max_seconds` is passed
(reject -> 413 at once, truncate -> keep the first `max_seconds`), and each block is
downmixed and resampled to the target rate before it is kept, so memory is bounded by
`max_seconds` of mono audio at the rate the model takes, whatever the file says about
itself and whatever its own rate.

Decoder choice (measured in ../shared/notes/audio-io.md): libsndfile (soundfile) is the
fastest for WAV/FLAC and reads a capped window sample-exactly; PyAV (FFmpeg) for all else
(MP3, Ogg Vorbis/Opus, AAC/M4A with the moov atom anywhere, WebM from browsers), fed from a
seekable BytesIO. No temp files, no subprocess. Resampling is soxr HQ, streamed block by
block (the same samples as one call). Decoding is CPU work and synchronous: callers run
it in a worker thread.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Literal

import av
import numpy as np
import soundfile as sf
import soxr

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia

OnLong = Literal["reject", "truncate"]

ACCEPTED_FORMATS = "WAV, FLAC, MP3, OGG (Vorbis or Opus), Opus, AAC/M4A, WebM (Opus)"
MAX_CHANNELS = 64
"""More channels than any real recording has: beyond it the upload is refused (415)."""
MIN_SOURCE_RATE, MAX_SOURCE_RATE = 1_000, 768_000
FULL_LENGTH_RATE = 96_000
"""Up to this source rate the seconds limit holds as it is; above, the limit is that many
seconds' worth of samples at this rate (655,350 Hz: 15 % of the seconds), so decoding
work stays bounded by the limit whatever rate a file claims."""
MAX_SAMPLE_PEAK = 1000.0
"""Float audio beyond ±1000 (60 dB over full scale) is refused: no recording is that
loud, and a float WAV of 1e30 overflowed the log-mel into NaN scores."""
_BLOCK_FRAMES = 65_536
_FIRST_BLOCK_SAMPLES = 4 * 2**20
"""libsndfile's first read takes the whole file when its header claims no more than this
(4 Mi samples, 16 MB of float32, over all channels) and no more than the cap: one read and
no concatenation (10 s of 48 kHz mono WAV: 1.8 -> 1.3 ms). A header that lies only sizes
that first read; the block loop goes on after it either way."""
AV_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError, UnicodeDecodeError)
_SF_ERRORS = (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError)


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray
    """Mono float32, 1-D, at `sample_rate`."""
    sample_rate: int
    source_rate: int
    source_channels: int
    container: str
    """Short container name as the decoder saw it: wav, flac, mp3, ogg, mov, matroska..."""
    codec: str
    truncated: bool = False
    """True when the audio went on past `max_seconds` and only the start was kept."""
    original_duration_s: float | None = None
    """Length of the whole upload: exact when not truncated; when truncated, the
    container's own (unverified) claim, or None when it makes none."""
    incomplete: bool = False
    """The stream broke off with a decode error (e.g. a cut FLAC); `samples` holds what
    decoded before it."""

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass
class _Raw:
    """What a decoder backend hands back: mono at the target rate, described at the
    source's rate (`frames` decoded at `rate`)."""

    mono: np.ndarray
    frames: int
    rate: int
    channels: int
    container: str
    codec: str
    truncated: bool
    claimed_s: float | None
    incomplete: bool


class _Collector:
    """Keeps decoded mono blocks until `max_seconds` of audio, resampled to the target rate
    as they come: the one place the cap lives. Memory is bounded by what the model will
    see (`max_seconds` at the target rate), not by the source's rate: 280 s of a FLAC
    at 655,350 Hz held 1.36 GB at its own rate, 18 MB at Emotion2Vec+'s 16 kHz."""

    def __init__(self, max_seconds: float, on_long: OnLong, target_rate: int) -> None:
        self.max_seconds = max_seconds
        self.on_long = on_long
        self.target_rate = target_rate
        self.rate = target_rate
        self.blocks: list[np.ndarray] = []
        self.frames = 0
        """Source frames kept."""
        self.cap = 0
        self.truncated = False
        self.claimed_s: float | None = None
        self._stream: soxr.ResampleStream | None = None

    def start(self, rate: int, claimed_s: float | None) -> None:
        self.rate = rate
        # the work is per source sample: above FULL_LENGTH_RATE the cap is in its samples
        self.cap = math.floor(self.max_seconds * min(rate, FULL_LENGTH_RATE) + 1e-6)
        self.claimed_s = claimed_s
        if rate != self.target_rate:  # the same output as one soxr.resample call
            self._stream = soxr.ResampleStream(rate, self.target_rate, 1, dtype="float32",
                                               quality="HQ")

    def add(self, mono: np.ndarray) -> bool:
        """Keep a block; True when decoding should stop (cap reached in truncate mode)."""
        room = self.cap - self.frames
        if len(mono) > room:
            if self.on_long == "reject":
                raise self.too_long()
            mono = mono[:room]
            self.truncated = True
        if len(mono):
            check_level(mono)  # at the source's rate: before resampling
            self.frames += len(mono)
            if self._stream is not None:  # blocks come in runs of >= _BLOCK_FRAMES
                mono = self._stream.resample_chunk(np.ascontiguousarray(mono, np.float32))
            self.blocks.append(mono)
        return self.truncated

    def too_long(self) -> PayloadTooLarge:
        claimed = self.claimed_s
        limit_s = self.cap / self.rate
        claim = (f" (the file says about {claimed:.0f} s)"
                 if claimed is not None and claimed > limit_s else "")
        rate_note = ("" if self.rate <= FULL_LENGTH_RATE else
                     f"; audio above {FULL_LENGTH_RATE} Hz gets the time of "
                     f"{self.max_seconds:g} s at {FULL_LENGTH_RATE} Hz, here {limit_s:.1f} s")
        return PayloadTooLarge(f"audio is longer than the {self.max_seconds:g} s limit"
                               f"{claim}{rate_note}")

    def samples(self) -> np.ndarray:
        """Everything kept, at the target rate: exactly round(frames * target / source)."""
        if self._stream is not None:
            self.blocks.append(self._stream.resample_chunk(np.zeros(0, np.float32), last=True))
            self._stream = None
        blocks = [b for b in self.blocks if len(b)]
        kept = (np.zeros(0, np.float32) if not blocks else
                blocks[0] if len(blocks) == 1 else np.concatenate(blocks))
        self.blocks = [kept]
        return _exact_length(kept, round(self.frames * self.target_rate / self.rate))


def decode_audio(
    data: bytes,
    *,
    target_rate: int,
    max_seconds: float,
    on_long: OnLong = "reject",
    max_bytes: int | None = None,
    min_seconds: float = 0.0,
    minimum: MinimumAudio | None = None,
) -> DecodedAudio:
    """Decode `data` to mono float32 at `target_rate`, enforcing every limit while decoding.

    Raises PayloadTooLarge (bytes or seconds over the limit), UnsupportedMedia (not audio
    we can decode), InvalidInput (empty, no samples, non-finite or too loud samples, too
    short: `min_seconds`, or the model's `minimum` in samples at `target_rate`).
    """
    if on_long not in ("reject", "truncate"):
        raise ValueError(f"on_long must be 'reject' or 'truncate', not {on_long!r}")
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLarge(
            f"upload is {len(data)} bytes; the limit is {max_bytes} bytes"
        )
    if not data:
        raise InvalidInput("the upload is empty; send an audio file")
    raw = _decode_native(data, max_seconds, on_long, target_rate)
    samples = raw.mono
    if raw.frames == 0:
        raise InvalidInput("the audio contains no samples")
    if minimum is not None:
        minimum.check(len(samples), target_rate)
    duration = len(samples) / target_rate
    if duration < min_seconds:
        raise InvalidInput(
            f"audio is {duration:.2f} s long; the minimum is {min_seconds:g} s"
        )
    return DecodedAudio(
        samples=samples,
        sample_rate=target_rate,
        source_rate=raw.rate,
        source_channels=raw.channels,
        container=raw.container,
        codec=raw.codec,
        truncated=raw.truncated,
        original_duration_s=_original_duration(raw),
        incomplete=raw.incomplete,
    )


@dataclass(frozen=True)
class MinimumAudio:
    """The shortest audio a model takes, in samples at its rate, and why (one rule for
    every audio route: a clip shorter than the model's first frame is a 422 naming it)."""

    model: str
    samples: int
    reason: str

    def check(self, samples: int, rate: int) -> None:
        if samples < self.samples:
            raise InvalidInput(
                f"audio is {samples} samples ({samples / rate:.4f} s) at {rate} Hz; "
                f"{self.model} needs at least {self.samples} samples "
                f"({self.samples / rate:.3f} s): {self.reason}")


def check_level(samples: np.ndarray) -> None:
    """Finite samples within MAX_SAMPLE_PEAK: one pass (np.max propagates NaN). Checked on
    each decoded block at the source's rate, before resampling, which would smear a NaN
    or an absurd peak over its neighbours (or smooth a single-sample spike away). The one
    check for uploads and live streams (service.live.decode.check_level)."""
    # min and max: two SIMD reductions without the temporary np.abs would make
    peak = max(-float(samples.min()), float(samples.max())) if samples.size else 0.0
    if math.isnan(peak) or math.isinf(peak):
        raise InvalidInput("the audio contains non-finite (NaN or infinite) samples")
    if peak > MAX_SAMPLE_PEAK:
        raise InvalidInput(
            f"the audio's samples reach {peak:.3g}; float audio must stay within "
            f"±{MAX_SAMPLE_PEAK:g} (full scale is ±1): features of louder audio overflow"
        )


def _original_duration(raw: _Raw) -> float | None:
    decoded_s = raw.frames / raw.rate
    if not raw.truncated:
        return decoded_s
    # A claim shorter than what was already decoded is a lie: say we do not know.
    if raw.claimed_s is not None and raw.claimed_s > decoded_s:
        return raw.claimed_s
    return None


def _decode_native(data: bytes, max_seconds: float, on_long: OnLong, target_rate: int) -> _Raw:
    """libsndfile for WAV/FLAC, FFmpeg for the rest and for what libsndfile chokes on."""
    def collector() -> _Collector:
        return _Collector(max_seconds, on_long, target_rate)

    if not _looks_like_sndfile(data):
        return _decode_with_av(data, collector())
    raw = _decode_with_soundfile(data, collector())
    if raw is not None and not raw.incomplete:
        return raw
    # libsndfile drops the whole block that holds a decode error (a FLAC cut mid-stream
    # loses up to 1.4 s); FFmpeg keeps every frame before the error, so it gets a go.
    try:
        rescued = _decode_with_av(data, collector())
    except UnsupportedMedia:
        if raw is None or raw.frames == 0:
            raise
        return raw
    if raw is not None and raw.frames > rescued.frames:
        return raw
    rescued.incomplete = rescued.incomplete or raw is not None
    return rescued


def _looks_like_sndfile(data: bytes) -> bool:
    """WAV/RF64/AIFF/FLAC by magic bytes; the rest goes to FFmpeg, which probes itself."""
    head = data[:12]
    if head[:4] in (b"RIFF", b"RF64"):
        return head[8:12] == b"WAVE"
    if head[:4] == b"FORM":
        return head[8:12] in (b"AIFF", b"AIFC")
    return head[:4] == b"fLaC"


def _check_shape(channels: int, rate: int) -> None:
    if not 1 <= channels <= MAX_CHANNELS:
        raise UnsupportedMedia(
            f"audio has {channels} channels; between 1 and {MAX_CHANNELS} are accepted"
        )
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise UnsupportedMedia(
            f"audio sample rate {rate} Hz is outside {MIN_SOURCE_RATE}-{MAX_SOURCE_RATE} Hz"
        )


def _unsupported(detail: str = "") -> UnsupportedMedia:
    why = f" ({detail})" if detail else ""
    return UnsupportedMedia(f"could not decode the upload as audio{why}; accepted: "
                            f"{ACCEPTED_FORMATS}")


def _decode_with_soundfile(data: bytes, collector: _Collector) -> _Raw | None:
    """libsndfile, block by block. None when it cannot open the file (FFmpeg may)."""
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except _SF_ERRORS:
        return None
    with f:
        _check_shape(f.channels, f.samplerate)
        claimed = f.frames / f.samplerate if 0 < f.frames < 2**62 else None
        collector.start(f.samplerate, claimed)
        size = _BLOCK_FRAMES
        if claimed is not None:
            size = max(size, min(f.frames, collector.cap, _FIRST_BLOCK_SAMPLES // f.channels) + 1)
        pcm16 = f.subtype == "PCM_16"
        incomplete = False
        try:
            while True:
                if pcm16:
                    block = from_pcm16(f.read(size, dtype="int16", always_2d=True))
                else:
                    block = f.read(size, dtype="float32", always_2d=True)
                size = _BLOCK_FRAMES
                if len(block) == 0 or collector.add(_downmix(block.T)):
                    break
        except _SF_ERRORS:
            incomplete = True
        return _Raw(collector.samples(), collector.frames, f.samplerate, f.channels,
                    f.format.lower(), f.subtype.lower(), collector.truncated,
                    collector.claimed_s, incomplete)


_PCM16_SCALE = np.float32(2.0**-15)


def from_pcm16(block: np.ndarray) -> np.ndarray:
    """16-bit PCM as float32, as libsndfile would return it (x / 32768), at a seventh of
    its cost: libsndfile's own conversion took 1.3 of the 1.6 ms that decoding 10 s of
    48 kHz mono WAV cost. The factor is a power of two, so every sample is bit for bit
    libsndfile's (tests/test_audio_decode.py)."""
    out = block.astype(np.float32)
    out *= _PCM16_SCALE
    return out


def _decode_with_av(data: bytes, collector: _Collector) -> _Raw:
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except AV_ERRORS as exc:
        raise _unsupported() from exc
    with container:
        if not container.streams.audio:
            raise _unsupported("no audio stream found")
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        if ctx is None:  # FFmpeg parsed the container but has no decoder for the codec
            raise _unsupported("FFmpeg has no decoder for its audio codec")
        _check_shape(ctx.channels, ctx.sample_rate)
        rate = ctx.sample_rate
        collector.start(rate, _claimed_seconds(container, stream))
        incomplete = _av_frames(container, stream, rate, collector)
        return _Raw(collector.samples(), collector.frames, rate, ctx.channels,
                    container.format.name.split(",")[0], ctx.name,
                    collector.truncated, collector.claimed_s, incomplete)


def _av_frames(container: av.container.InputContainer, stream: av.AudioStream, rate: int,
               collector: _Collector) -> bool:
    """Feed decoded frames to the collector; True when a decode error cut the stream.

    Frames (about a thousand samples each) are converted and downmixed in runs of up to
    `_BLOCK_FRAMES` samples: per frame that numpy work cost more than decoding itself
    (10 s of MP3: 380 frames)."""
    run = _FrameRun(rate)
    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                if run.needs_flush(frame) and collector.add(run.flush()):
                    return False
                run.append(frame)
    except AV_ERRORS as exc:
        if collector.frames == 0 and not run.samples:
            raise _unsupported("the audio stream is corrupt or cut short") from exc
        collector.add(run.flush())
        return True
    collector.add(run.flush())
    return False


class _FrameRun:
    """Decoded frames of one sample format, layout and rate, waiting to become mono."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.arrays: list[np.ndarray] = []
        self.samples = 0
        self.key: tuple[str, int, int] | None = None

    def needs_flush(self, frame: av.AudioFrame) -> bool:
        key = (frame.format.name, frame.layout.nb_channels, frame.sample_rate)
        return bool(self.arrays) and (key != self.key or self.samples >= _BLOCK_FRAMES)

    def append(self, frame: av.AudioFrame) -> None:
        self.key = (frame.format.name, frame.layout.nb_channels, frame.sample_rate)
        arr = frame.to_ndarray()
        if not frame.format.is_planar:
            arr = arr.reshape(-1, frame.layout.nb_channels).T
        self.arrays.append(arr)
        self.samples += arr.shape[1]

    def flush(self) -> np.ndarray:
        """The run as mono float32 at the stream's rate; the run starts empty again."""
        if not self.arrays:
            return np.zeros(0, np.float32)
        assert self.key is not None
        kind, _, frame_rate = self.key
        planes = self.arrays[0] if len(self.arrays) == 1 else np.concatenate(self.arrays, 1)
        self.arrays, self.samples = [], 0
        mono = planes_to_mono(planes, kind.rstrip("p"))
        if frame_rate != self.rate:  # rare: a stream that changes rate midway
            mono = resample(mono, frame_rate, self.rate)
        return mono


def _claimed_seconds(container: av.container.InputContainer,
                     stream: av.AudioStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


_INT_SCALE = {"u8": 1 / 128, "s16": 1 / 2**15, "s32": 1 / 2**31, "s64": 1 / 2**63}


def planes_to_mono(planes: np.ndarray, kind: str) -> np.ndarray:
    """(channels, frames) of any FFmpeg sample kind (int or float) -> mono float32."""
    if kind in _INT_SCALE:
        floats = planes.astype(np.float32)
        if kind == "u8":
            floats -= 128.0
        return _downmix(floats) * np.float32(_INT_SCALE[kind])
    return _downmix(planes.astype(np.float32, copy=False))


def _downmix(planes: np.ndarray) -> np.ndarray:
    """(channels, frames) -> (frames,): the mean, so a full-scale source stays in range.

    Channel by channel on purpose: numpy's mean over a short axis is ~8x slower. A mono
    block is returned as it is (a fresh array from the decoder): no copy."""
    if len(planes) == 1:
        return np.ascontiguousarray(planes[0], dtype=np.float32)
    mono = np.array(planes[0], dtype=np.float32)
    for plane in planes[1:]:
        mono += plane
    if len(planes) > 1:
        mono *= np.float32(1 / len(planes))
    return mono


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """soxr HQ (alias-free to -130 dB); the result has exactly round(n * to / from) samples."""
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if from_rate == to_rate:
        return samples
    if len(samples) == 0:
        return np.zeros(0, np.float32)
    out = soxr.resample(samples, from_rate, to_rate, quality="HQ")
    return _exact_length(out, round(len(samples) * to_rate / from_rate))


def _exact_length(samples: np.ndarray, want: int) -> np.ndarray:
    """Cut or zero-pad to `want` samples (soxr may be off by one at the end)."""
    if len(samples) > want:
        samples = samples[:want]
    elif len(samples) < want:
        samples = np.pad(samples, (0, want - len(samples)))
    return np.ascontiguousarray(samples, dtype=np.float32)


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level in dB relative to full scale; -inf for empty or all-zero audio."""
    if len(samples) == 0:
        return -math.inf
    # one BLAS dot product: 16x cheaper than a float64 square-and-mean over a 10 s window
    # (0.03 vs 0.43 ms), within 1e-4 dB of it
    flat = np.ascontiguousarray(samples).reshape(-1)
    rms = math.sqrt(max(float(np.dot(flat, flat)), 0.0) / len(flat))
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def is_silent(samples: np.ndarray, threshold_db: float = -60.0) -> bool:
    return rms_dbfs(samples) < threshold_db


def require_audible(samples: np.ndarray, threshold_db: float = -60.0) -> None:
    """For endpoints where silence is a client mistake (e.g. emotion of an empty room)."""
    level = rms_dbfs(samples)
    if level < threshold_db:
        shown = "-inf" if math.isinf(level) else f"{level:.1f}"
        raise InvalidInput(
            f"the audio is silent ({shown} dBFS RMS; at least {threshold_db:g} dBFS needed)"
        )

