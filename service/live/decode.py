"""Incremental decoding of a live stream to mono float32, and per-model resampling.

PCM frames may be cut anywhere (mid-sample, mid-frame): the remainder waits for the next
frame. PCM s16 becomes float exactly as the upload decoder does it (x / 32768, bit for
bit libsndfile's), so a live window equals `/classify` of the same samples as 16-bit WAV.
WebM/Ogg Opus are demuxed and decoded by PyAV (FFmpeg) in a thread of their own, reading
from a pipe the socket fills (FFmpeg's demuxers pull bytes: a blocking reader is the way to
feed them incrementally); the frames become mono through the upload decoder's own code.
An encoded stream is held to what a PCM config may say (rate, channels: checked on its
header and on every frame, before any window is cut) and its float samples to the upload
decoder's level check, as PCM float is. It is paced where it is decoded: after each frame
the decoder thread waits while the stream is ahead of real time plus `live_max_ahead_s`
(the session says how long), so the pipe fills and the socket is no longer read; what is
decoded ahead is bounded by that pace, what waits undecoded by the pipe's bytes.
Resampling to each model's rate is soxr HQ streamed (`soxr.ResampleStream`), as the
upload decoder does it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections.abc import Callable

import av
import numpy as np
import soxr

from service.audio import decode as upload
from service.audio.decode import AV_ERRORS, from_pcm16, planes_to_mono
from service.errors import InvalidInput
from service.live.protocol import ProtocolError, check_shape

log = logging.getLogger("audioserve.live")

Sink = Callable[[np.ndarray, int, float], float]
"""Takes mono float32 blocks, their (source) rate and when they count as received
(monotonic): when the newest bytes fed to the decoder arrived (the block's own came then
or before) or, if later, when the pace last let the decoder go on (a PCM frame counts
from when it is read, after the pace's wait: a block held back is not overdue). Called in
order, in the decoder's thread; returns how long the decoder waits before it decodes more
(the stream's pace: > 0 while it is ahead of real time plus live_max_ahead_s)."""

_FLOAT_KINDS = ("flt", "dbl")
"""Sample kinds that can hold NaN, infinity or a peak beyond full scale (integers cannot)."""


def check_level(mono: np.ndarray, fmt: str) -> None:
    """The upload decoder's level check (NaN, infinity, beyond ±MAX_SAMPLE_PEAK: the
    log-mel overflows into NaN scores) as a live stream's error."""
    try:
        upload.check_level(mono)
    except InvalidInput as exc:
        raise ProtocolError("unsupported_audio", f"the {fmt} stream: {exc.message}") from None


class PcmDecoder:
    """Interleaved little-endian PCM frames -> mono float32 blocks."""

    def __init__(self, fmt: str, channels: int) -> None:
        self.format = fmt
        self.dtype = np.dtype("<i2") if fmt == "pcm_s16le" else np.dtype("<f4")
        self.channels = channels
        self.frame_bytes = self.dtype.itemsize * channels
        self._rest = b""

    def feed(self, data: bytes) -> np.ndarray:
        data = self._rest + data
        usable = len(data) - len(data) % self.frame_bytes
        self._rest = data[usable:]
        raw = np.frombuffer(data[:usable], dtype=self.dtype)
        samples = from_pcm16(raw) if self.dtype.kind == "i" else raw.astype(np.float32)
        if self.channels > 1:
            samples = planes_to_mono(samples.reshape(-1, self.channels).T, "flt")
        if self.dtype.kind == "f":
            check_level(samples, self.format)
        return samples

    def leftover(self) -> int:
        """Bytes of an incomplete sample frame still held (at the end: the client's error)."""
        return len(self._rest)


class _Pipe(io.RawIOBase):
    """A blocking byte pipe: the socket writes, FFmpeg's demuxer reads (in its thread)."""

    def __init__(self, max_bytes: int, on_read: Callable[[], object]) -> None:
        self._buf = bytearray()
        self._closed = False
        self._cond = threading.Condition()
        self.max_bytes = max_bytes
        self.on_read = on_read
        """Called (in the reader's thread) after bytes were taken: room for a writer."""
        self.written_at = 0.0
        """When the newest bytes were written (monotonic)."""

    def readable(self) -> bool:
        return True

    def readinto(self, target: memoryview) -> int:  # type: ignore[override]
        with self._cond:
            while not self._buf and not self._closed:
                self._cond.wait()
            n = min(len(target), len(self._buf))
            target[:n] = self._buf[:n]
            del self._buf[:n]
            self._cond.notify_all()
        if n:
            self.on_read()
        return n

    def write_bytes(self, data: bytes) -> bool:
        """False when the decoder is that far behind (the caller waits and retries)."""
        with self._cond:
            if len(self._buf) > self.max_bytes:
                return False
            self._buf.extend(data)
            self.written_at = time.monotonic()
            self._cond.notify_all()
            return True

    def finish(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class EncodedDecoder:
    """WebM or Ogg (Opus, or whatever FFmpeg finds in them) decoded as the bytes arrive.

    Decoded blocks are handed to `sink` in the decoder's thread (the stream's analysis runs
    there too, off the event loop); a decode error, or a ProtocolError the sink raises
    (which ends decoding), goes to `on_error` on the loop."""

    def __init__(self, fmt: str, loop: asyncio.AbstractEventLoop, sink: Sink,
                 on_error: Callable[[ProtocolError], None], max_buffer: int) -> None:
        self.format = fmt
        self.container_format = "matroska" if fmt == "webm" else "ogg"
        self.source = f"the {fmt} stream"
        self.loop = loop
        self.sink = sink
        self.on_error = on_error
        self._room = asyncio.Event()
        """Set (on the loop) when the demuxer took bytes from the pipe."""
        self.pipe = _Pipe(max_buffer, lambda: loop.call_soon_threadsafe(self._room.set))
        self.finished = asyncio.Event()
        self._stop = threading.Event()
        """Set by abort: decoding, and the pace's wait, end at once."""
        self._paced_until = 0.0
        """When the decoder's last wait for the pace ended (monotonic)."""
        self._thread = threading.Thread(target=self._run, name="live-decode", daemon=True)
        self._thread.start()

    async def feed(self, data: bytes) -> None:
        """Queue bytes for the demuxer; waits while the pipe is full (the decoder is behind,
        or paced), so the socket is not read meanwhile. Bytes that come after decoding
        ended (an error, reported to on_error) are dropped."""
        while True:
            self._room.clear()  # before trying: a read after this sets it again
            if self.pipe.write_bytes(data) or self.finished.is_set():
                return
            waits = [asyncio.ensure_future(e.wait()) for e in (self._room, self.finished)]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

    async def finish(self) -> None:
        self.pipe.finish()
        await self.finished.wait()

    def abort(self) -> None:
        self._stop.set()
        self.pipe.finish()

    def _run(self) -> None:
        try:
            with av.open(self.pipe, mode="r", format=self.container_format,
                         metadata_errors="ignore") as container:
                if not container.streams.audio:
                    raise ProtocolError("unsupported_audio", "the stream has no audio track")
                stream = container.streams.audio[0]
                ctx = stream.codec_context
                if ctx is None:  # FFmpeg parsed the container, has no decoder for the codec
                    raise ProtocolError("unsupported_audio", f"{self.source} holds audio in "
                                        "a codec FFmpeg cannot decode; send Opus or PCM")
                if ctx.sample_rate:  # the header's claim (0: none), before any decoding
                    check_shape(ctx.sample_rate, ctx.channels or 1, self.source)
                for packet in container.demux(stream):
                    for frame in packet.decode():
                        if not self._emit(frame):
                            return
        except ProtocolError as exc:
            self._fail(exc)
        except AV_ERRORS as exc:
            self._fail(ProtocolError("unsupported_audio",
                                     f"cannot decode the {self.format} stream "
                                     f"({exc}); send WebM or Ogg with Opus audio, or PCM"))
        except Exception:  # a defect (in the sink too): said, never a silent stop
            log.exception("live decoding failed")
            self._fail(ProtocolError("internal_error", "the server failed decoding this "
                                     "stream (logged); please report it"))
        finally:
            self.loop.call_soon_threadsafe(self.finished.set)

    def _emit(self, frame: av.AudioFrame) -> bool:
        """One frame, checked (each: a stream may change its rate or layout midway), to
        the sink, then the pace's wait; False once aborted."""
        check_shape(frame.sample_rate, frame.layout.nb_channels, self.source)
        kind = frame.format.name.rstrip("p")
        arr = frame.to_ndarray()
        if not frame.format.is_planar:
            arr = arr.reshape(-1, frame.layout.nb_channels).T
        mono = planes_to_mono(arr, kind)
        if kind in _FLOAT_KINDS:
            check_level(mono, self.format)
        wait = self.sink(mono, frame.sample_rate,
                         max(self.pipe.written_at, self._paced_until))
        if wait > 0:
            self._stop.wait(wait)
            self._paced_until = time.monotonic()
        return not self._stop.is_set()

    def _fail(self, exc: ProtocolError) -> None:
        self.loop.call_soon_threadsafe(self.on_error, exc)


class Resampler:
    """One model's rate: streamed soxr HQ (nothing to do when the rates agree)."""

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self._stream = (None if from_rate == to_rate else
                        soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32",
                                            quality="HQ"))

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return block
        return self._stream.resample_chunk(np.ascontiguousarray(block, np.float32), last=last)
