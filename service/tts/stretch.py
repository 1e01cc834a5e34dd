"""Speech speed by time-stretching: a phase vocoder (duration / speed, pitch kept).

Why not ChatTTS's `[speed_N]` prompt token: its effect is learnt, uncalibrated (no stated
ratio per step) and absent with random weights, so a requested `speed` could not be met
or tested; stretching gives the asked duration exactly on any pack.

Design note. STFT (Hann, n_fft 1024 = 43 ms at 24 kHz, hop 256); output frame j reads the
input at fractional frame j * speed, interpolating magnitudes linearly between the two
neighbouring frames and advancing each bin's phase by the measured phase increment
between them (the standard phase-vocoder recurrence), then overlap-add with the squared
window's envelope normalised out. Output length is round(len / speed).

`StreamingStretch` runs the same recurrence as the samples come (`time_stretch` is it fed
at once): an input frame is analysed once its 1024 samples are in, an output frame is
made once the two input frames it reads are there, and an output sample is sent once no
later frame overlaps it; the output equals the whole-piece stretch sample for sample, ~2
frames behind the input. A streamed piece at speed != 1 therefore goes out window by
window like one at speed 1, and a client that stops reading pauses its generation the
same way (it used to collect a whole piece first, so a stalled client never paused).
"""

from __future__ import annotations

import math

import numpy as np

N_FFT = 1024
HOP = 256
MIN_SPEED, MAX_SPEED = 0.25, 4.0
FEED_SAMPLES = 16_384
"""A whole wave is stretched this many samples at a time: arrays that stay in cache."""


class StreamingStretch:
    """The phase vocoder fed chunk by chunk (see the module's note): `feed` returns the
    output samples that are final, `finish` the rest; together exactly `time_stretch`."""

    def __init__(self, speed: float) -> None:
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed {speed} outside [{MIN_SPEED}, {MAX_SPEED}]")
        self.speed = speed
        self.window = np.hanning(N_FFT + 1)[:-1].astype(np.float64)
        self._expected = 2 * np.pi * HOP * np.arange(N_FFT // 2 + 1) / N_FFT
        self._input = np.zeros(N_FFT // 2)  # the left padding; padded coordinates
        self._input_start = 0
        """Padded index of `_input[0]`."""
        self._received = 0
        self._spec = np.zeros((0, N_FFT // 2 + 1), np.complex128)
        self._spec_start = 0
        """Index of the input frame `_spec[0]`."""
        self._phase: np.ndarray | None = None
        self._next_out = 0
        """Index of the next output frame."""
        self._acc = np.zeros(0)
        self._env = np.zeros(0)
        self._acc_start = 0
        """Output position (before the N_FFT // 2 offset) of `_acc[0]`."""
        self._sent = 0
        self._done = False

    def feed(self, samples: np.ndarray) -> np.ndarray:
        if self._done:
            raise RuntimeError("feed() after finish()")
        x = np.asarray(samples, np.float64)
        self._received += len(x)
        self._input = np.concatenate([self._input, x])
        self._analyse()
        self._synthesise(int(np.ceil(self._frames_in() / self.speed)))
        # never past round(total / speed), whatever the total turns out to be
        return self._send(min(self._final_end(), int(self._received / self.speed) - 1))

    def finish(self) -> np.ndarray:
        if self._done:
            return np.zeros(0, np.float32)
        self._done = True
        target = round(self._received / self.speed)
        if self._received == 0:
            return np.zeros(0, np.float32)
        self._input = np.concatenate([self._input, np.zeros(N_FFT // 2 + HOP)])
        self._analyse()
        count = self._frames_in()
        self._spec = np.concatenate([self._spec, np.zeros((1, N_FFT // 2 + 1))])  # edge
        steps = math.ceil(count / self.speed)  # output frames j with j * speed < count
        while steps and (steps - 1) * self.speed >= count:
            steps -= 1  # (np.arange's float length once read one frame past the edge)
        self._synthesise(steps)
        out = self._send(self._final_end())
        if self._sent < target:
            out = np.concatenate([out, np.zeros(target - self._sent, np.float32)])
            self._sent = target
        return out[: max(0, len(out) - (self._sent - target))]

    def _frames_in(self) -> int:
        return self._spec_start + len(self._spec)

    def _analyse(self) -> None:
        """Input frames whose samples are all in."""
        end = self._input_start + len(self._input)
        first = self._frames_in()
        count = max(0, (end - N_FFT) // HOP + 1 - first)
        if count:
            start = first * HOP - self._input_start
            idx = start + np.arange(N_FFT)[None, :] + HOP * np.arange(count)[:, None]
            frames = np.fft.rfft(self._input[idx] * self.window, axis=1)
            self._spec = np.concatenate([self._spec, frames])
        keep = self._frames_in() * HOP - self._input_start  # the next frame starts here
        self._input = self._input[keep:]
        self._input_start += keep

    def _synthesise(self, limit: int) -> None:
        """Output frames up to `limit` whose two input frames are there, all at once.

        The phase recurrence phase' = (phase + expected) + delta needs no loop: delta
        depends on the input frames only, so `np.add.accumulate` over [phase, expected,
        delta_0, expected, delta_1, ...] gives every frame's phase in the loop's own order
        of additions (the same doubles); a per-frame loop held the GIL for seconds on a
        long piece at speed 0.25 (a /healthz stall of 1 s)."""
        available = self._frames_in()
        j = np.arange(self._next_out, max(limit, self._next_out))
        t = j * self.speed
        i = t.astype(np.int64)
        ready = i + 1 < available  # True, then False: the frames whose inputs are there
        count = len(ready) if ready.all() else int(np.argmin(ready))
        if count:
            t, i = t[:count], i[:count] - self._spec_start
            frac = (t - np.floor(t))[:, None]
            left, right = self._spec[i], self._spec[i + 1]
            magnitude = (1 - frac) * np.abs(left) + frac * np.abs(right)
            delta = np.angle(right) - np.angle(left) - self._expected
            delta -= 2 * np.pi * np.round(delta / (2 * np.pi))
            if self._phase is None:
                self._phase = np.angle(self._spec[0])
            steps = np.empty((2 * count + 1, delta.shape[1]))
            steps[0], steps[1::2], steps[2::2] = self._phase, self._expected, delta
            phases = np.add.accumulate(steps, axis=0)
            self._phase = phases[-1]
            out = magnitude * np.exp(1j * phases[0:-1:2])
            self._next_out += count
            self._overlap_add(np.fft.irfft(out, n=N_FFT, axis=1) * self.window)
        drop = min(int(self._next_out * self.speed), available) - self._spec_start
        if drop > 0:
            self._spec = self._spec[drop:]
            self._spec_start += drop

    def _overlap_add(self, frames: np.ndarray) -> None:
        """Frame j adds to samples [j HOP, j HOP + N_FFT): four HOP-blocks. Added block
        offset 3 first, then 2, 1, 0, so every sample takes its frames in ascending
        order, as a frame-by-frame loop adds them (the same doubles, chunked or not)."""
        count = len(frames)
        base = (self._next_out - count) * HOP - self._acc_start
        end = base + (count + 3) * HOP
        if end > len(self._acc):
            grow = end - len(self._acc)
            self._acc = np.concatenate([self._acc, np.zeros(grow)])
            self._env = np.concatenate([self._env, np.zeros(grow)])
        acc = self._acc[base:end].reshape(count + 3, HOP)
        env = self._env[base:end].reshape(count + 3, HOP)
        squared = (self.window**2).reshape(4, HOP)
        for r in (3, 2, 1, 0):
            acc[r : r + count] += frames[:, r * HOP : (r + 1) * HOP]
            env[r : r + count] += squared[r]

    def _final_end(self) -> int:
        """Output samples (after the offset) no later frame will touch."""
        end = (self._next_out * HOP if not self._done
               else self._acc_start + len(self._acc))
        return end - N_FFT // 2

    def _send(self, end: int) -> np.ndarray:
        """Normalised samples from `_sent` up to `end` (output index), then dropped."""
        if end <= self._sent:
            return np.zeros(0, np.float32)
        lo = self._sent + N_FFT // 2 - self._acc_start
        hi = end + N_FFT // 2 - self._acc_start
        out = self._acc[lo:hi] / np.maximum(self._env[lo:hi], 1e-8)
        self._sent += len(out)
        self._acc, self._env = self._acc[hi:], self._env[hi:]
        self._acc_start += hi
        return out.astype(np.float32)


def time_stretch(samples: np.ndarray, speed: float) -> np.ndarray:
    """Mono float32 at `speed` x (2.0: half as long). speed 1 returns the input."""
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed {speed} outside [{MIN_SPEED}, {MAX_SPEED}]")
    x = np.asarray(samples, np.float32)
    if speed == 1.0 or len(x) == 0:
        return x
    stretch = StreamingStretch(speed)
    parts = [stretch.feed(x[at : at + FEED_SAMPLES]) for at in range(0, len(x), FEED_SAMPLES)]
    return np.concatenate([*parts, stretch.finish()])
