"""A live stream's CLAP log-mel, each window reusing the frames it shares with the last.

Live windows (service.live.windows) are 10 s long and one hop apart, so a window's frame j
is the previous window's frame j + hop/hop_length wherever both frames lie inside their
windows (cf.interior_frames: no reflect padding). Only the new frames and the few padded
edge frames are transformed; the rest is copied. What is kept is each frame's power
spectrum (cf.frame_power rows, exact row by row), not its dB: the mel product runs again
over the whole window (cf.mel_db, under a tenth of the log-mel's time), because BLAS
gives a row a different last bit in another batch (reusing dB rows: 1.5e-5 dB off), and
the features then equal cf.window_features of the same samples to the bit, so live
scores stay /classify's.

Reuse needs the shared samples to be the same numbers: the caller passes a window's
`start` only where they are (a stream at the model's rate, whose windows are slices of
it). A stream at another rate has each window resampled alone, and soxr's output in the
overlap then differs from the previous window's by up to 2e-3 wherever the audio is not
digital silence (measured on speech with silent gaps, 2 s hop: the samples of 32 % of the
shared frames equal, all of them zeros). Reusing those frames anyway moved the log-mel by
up to 2.8e-3 dB at 16 kHz and 5.2e-4 dB at 44.1 kHz, past the 1e-3 dB the features are
held to (the tiny test model's scores by 7e-8), and checking the samples frame by frame
would pay off only in digital silence: such a stream gets `start=None`, the whole
log-mel as before. Anything else the cache cannot serve (the first window, a short or
padded one, a shift that is not a whole number of frames, a window older than the kept
one) is computed whole too; a skipped window is not a special case, as a larger shift
still shares interior frames.
"""

from __future__ import annotations

import threading

import numpy as np

from service.audio import clap_features as cf


class LogMelCache:
    """One stream's last window's frame power rows (one window's worth: 1.2 MB for CLAP).

    Thread-safe: a stream's windows are prepared in the CPU pool, possibly two at once or
    out of order; the newest window's rows are kept."""

    def __init__(self, cfg: cf.MelConfig) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self._start: int | None = None
        """Absolute start (samples at the model's rate) of the window kept in `_power`."""
        self._power: np.ndarray | None = None
        self.reused_frames = 0
        """Frames copied rather than transformed so far (for tests and benchmarks)."""

    def window_features(self, samples: np.ndarray, start: int | None) -> np.ndarray:
        """float32 [1, frames, n_mels]: cf.window_features of one window's samples (at the
        model's rate), `start` its absolute offset in the stream, None where its samples
        are not the stream's own (see the module note)."""
        cfg = self.cfg
        if start is None or samples.shape[0] != cfg.max_length_samples:
            return cf.item_features(samples, cfg)
        samples = np.asarray(samples, dtype=np.float32)
        with self._lock:
            kept_start, kept = self._start, self._power
        power, reused = self._power_rows(samples, start, kept_start, kept)
        with self._lock:
            self.reused_frames += reused
            if self._start is None or start > self._start:
                power.setflags(write=False)
                self._start, self._power = start, power
        return cf.mel_db(power, cfg)[None, :, :]

    def _power_rows(self, samples: np.ndarray, start: int, kept_start: int | None,
                    kept: np.ndarray | None) -> tuple[np.ndarray, int]:
        """The window's power rows (and how many were copied): the interior ones it
        shares with the kept window copied, the rest transformed."""
        cfg, n = self.cfg, samples.shape[0]
        count = cf.frame_count(n, cfg)
        shift = -1 if kept_start is None else start - kept_start
        interior = cf.interior_frames(n, cfg)
        moved = shift // cfg.hop_length
        reuse = range(interior.start, interior.stop - moved)
        if kept is None or shift <= 0 or shift % cfg.hop_length or not reuse:
            return cf.frame_power(cf.frames(samples, 0, count, cfg), cfg), 0
        power = np.empty((count, kept.shape[1]), np.float32)
        power[:reuse.start] = cf.frame_power(cf.frames(samples, 0, reuse.start, cfg), cfg)
        power[reuse.start:reuse.stop] = kept[reuse.start + moved:reuse.stop + moved]
        power[reuse.stop:] = cf.frame_power(cf.frames(samples, reuse.stop, count, cfg), cfg)
        return power, len(reuse)
