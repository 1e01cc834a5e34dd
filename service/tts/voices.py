"""Named voices: seeded defaults, saved `spk_emb` strings, and weighted mixes of both.

Defaults are seeds, not files: a speaker's dimension and statistics belong to the pack
(768-d for the real model, 32-d for the tiny one), so each default is materialised from
the loaded pack's spk_stat at start-up, exactly as upstream's `sample_random_speaker`
after `torch.manual_seed(seed)`. They carry OpenAI's voice names, so clients that send
`alloy` get a stable voice. Saved voices are one JSON file per voice in `voices_dir`
holding the upstream-format `spk_emb` string (portable to any ChatTTS user, re-encoded
canonically) and where it came from (a mix is stored as its normalised text, never the
raw input). Names full-match `[A-Za-z0-9_-]{1,64}`: no dots or slashes, so a name is
never a path; names are unique ignoring case (`Alloy` clashes with the built-in `alloy`,
and two files never differ only in case, which case-insensitive disks could not hold).

The store is bounded: at most `max_saved` voices and `max_bytes` of files (a save over
either is refused, 409 naming the setting), and a listing reads at most that many
files and bytes, so even a folder filled by hand cannot make `GET /v1/voices` huge. A save
checks the caps and writes under an exclusive `flock` of `<voices_dir>/.lock`, so every
process sharing the folder (a cluster's ingress replicas) sees the caps as one. Every
method does file I/O or numpy work: call them in the CPU pool, never on the event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from service.errors import ApiError, InvalidInput, NotFound, PayloadTooLarge
from service.tts import speaker as speakers
from service.tts.voice_spec import NAME, VoiceLimits, VoiceSpec, parse_voice_spec

log = logging.getLogger("audioserve.tts.voices")

DEFAULT_VOICE_SEEDS: dict[str, int] = {
    "alloy": 2, "ash": 11, "ballad": 23, "coral": 42, "echo": 77, "fable": 111, "nova": 402,
    "onyx": 888, "sage": 1234, "shimmer": 2024, "verse": 4096,
}


LOCK_FILE = ".lock"
"""In the voices folder; its name is never a voice's (names have no dots)."""


class VoiceSource(StrEnum):
    SEED = "seed"
    SPK_EMB = "spk_emb"
    MIX = "mix"


class VoiceExists(ApiError):
    status, code = 409, "voice_exists"


class VoiceStoreFull(ApiError):
    status, code = 409, "voice_store_full"


@dataclass(frozen=True)
class StoreLimits:
    """Caps of the saved voices (`AUDIOSERVE_TTS_MAX_SAVED_VOICES`, `..._BYTES`)."""

    max_saved: int = 1000
    max_bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True)
class Voice:
    name: str
    source: VoiceSource
    spk_emb: str
    builtin: bool = False
    seed: int | None = None
    mix: str | None = None

    def public(self) -> dict[str, object]:
        return {"name": self.name, "source": self.source.value, "builtin": self.builtin,
                "seed": self.seed, "mix": self.mix}


@dataclass(frozen=True)
class VoiceListing:
    voices: list[Voice]
    truncated: bool
    """More files are saved than the caps let a listing read."""


def check_name(name: str) -> str:
    if not NAME.fullmatch(name or ""):
        raise InvalidInput(f"voice name {name[:80]!r} is not allowed: use 1-64 letters, "
                           "digits, '_' or '-'")
    return name


class VoiceStore:
    """Voices of one pack: seeded defaults plus the files in `root`."""

    def __init__(self, root: Path, stats: speakers.SpeakerStats,
                 limits: VoiceLimits | None = None, store: StoreLimits | None = None) -> None:
        self.root = root
        self.stats = stats
        self.limits = limits or VoiceLimits()
        self.store = store or StoreLimits()
        self._lock = threading.Lock()
        self._defaults = {
            name: Voice(name, VoiceSource.SEED, speakers.encode_spk_emb(
                speakers.sample_speaker(stats, seed)), builtin=True, seed=seed)
            for name, seed in DEFAULT_VOICE_SEEDS.items()
        }
        self._folded = {name.casefold(): name for name in self._defaults}

    # -- reading -------------------------------------------------------------------

    def listing(self) -> VoiceListing:
        """Defaults, then saved voices by name: at most `max_saved` files and `max_bytes`."""
        voices, budget, truncated = list(self._defaults.values()), self.store.max_bytes, False
        for name, size in sorted(self._entries()):
            if len(voices) - len(self._defaults) >= self.store.max_saved:
                return VoiceListing(voices, truncated=True)
            if size > budget:  # not read: the listing would pass the byte cap
                truncated = True
                continue
            voice = self._read(name, size)
            if voice is not None:
                voices.append(voice)
                budget -= size
        return VoiceListing(voices, truncated)

    def get(self, name: str) -> Voice:
        check_name(name)
        if name in self._defaults:
            return self._defaults[name]
        path = self.root / f"{name}.json"
        try:  # no is_file() then stat(): a DELETE may come between the two
            size = path.stat().st_size if path.is_file() else -1
        except FileNotFoundError:
            size = -1
        voice = self._read(name, size) if 0 <= size <= self.store.max_bytes else None
        if voice is None:
            raise NotFound(f"voice {name!r} is not known; built-in voices: "
                           f"{', '.join(self._defaults)}; GET /v1/voices lists the saved ones")
        return voice

    def resolve(self, text: str, field: str = "voice") -> np.ndarray:
        """A voice name, a mix `a(2)+b(1)`, or a raw `spk_emb` string -> speaker vector."""
        return self._vector(parse_voice_spec(text, self.limits, field), field)

    def decode(self, text: str, field: str = "spk_emb") -> np.ndarray:
        """A raw `spk_emb` string -> speaker vector: 413 over the length cap, 422 when it
        is not a speaker string of this pack's dimension (strictly: nothing may follow
        the LZMA2 stream, and the text must be canonical base16384)."""
        if len(text) > self.limits.max_chars:
            raise PayloadTooLarge(
                f"{field} has {len(text)} characters; the limit is {self.limits.max_chars} "
                "(AUDIOSERVE_TTS_VOICE_MAX_CHARS)")
        try:
            return speakers.decode_spk_emb(text, self.stats.dim)
        except ValueError as exc:
            raise InvalidInput(f"{field} is not a speaker string for this model "
                               f"({self.stats.dim}-d): {exc}") from None

    # -- writing -------------------------------------------------------------------

    def save(self, name: str, *, seed: int | None = None, spk_emb: str | None = None,
             mix: str | None = None, overwrite: bool = False) -> Voice:
        """Store a voice from exactly one of a seed, an `spk_emb` string or a mix."""
        check_name(name)
        if sum(x is not None for x in (seed, spk_emb, mix)) != 1:
            raise InvalidInput("send exactly one of `seed`, `spk_emb` or `mix`")
        builtin = self._folded.get(name.casefold())
        if builtin is not None:
            raise VoiceExists(f"voice {name!r} is the built-in voice {builtin!r} (names are "
                              "compared ignoring case); pick another name")
        voice = self._new_voice(name, seed, spk_emb, mix)
        data = json.dumps({"name": name, "source": voice.source.value, "seed": voice.seed,
                           "mix": voice.mix, "spk_emb": voice.spk_emb},
                          ensure_ascii=False).encode("utf-8")
        with self._exclusive():
            self._check_room(name, len(data), overwrite)
            tmp = self.root / f"{name}.json.tmp"
            tmp.write_bytes(data)
            tmp.replace(self.root / f"{name}.json")
        return voice

    def delete(self, name: str) -> None:
        check_name(name)
        if name in self._defaults:
            raise VoiceExists(f"voice {name!r} is built in and cannot be deleted")
        with self._exclusive():
            try:
                (self.root / f"{name}.json").unlink()
            except FileNotFoundError:
                raise NotFound(f"voice {name!r} is not saved here") from None

    # -- internals -----------------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One check-and-write at a time: among this process's threads (the lock) and
        among the processes sharing the folder (`flock`; a per-process lock let two
        ingress replicas each pass the count check at once)."""
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.root / LOCK_FILE, "ab") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
                yield

    def _new_voice(self, name: str, seed: int | None, spk_emb: str | None,
                   mix: str | None) -> Voice:
        if seed is not None:
            return Voice(name, VoiceSource.SEED, speakers.encode_spk_emb(
                speakers.sample_speaker(self.stats, seed)), seed=seed)
        if spk_emb is not None:
            vector = self.decode(spk_emb, "spk_emb")
            return Voice(name, VoiceSource.SPK_EMB, speakers.encode_spk_emb(vector))
        assert mix is not None
        spec = parse_voice_spec(mix, self.limits, "mix")
        vector = self._vector(spec, "mix")
        return Voice(name, VoiceSource.MIX, speakers.encode_spk_emb(vector),
                     mix=spec.normalised)

    def _check_room(self, name: str, size: int, overwrite: bool) -> None:
        """Under the lock: the name is free (ignoring case) and the caps leave room."""
        entries = self._entries()
        same = next((n for n, _ in entries if n.casefold() == name.casefold()), None)
        if same is not None and same != name:
            raise VoiceExists(f"voice {name!r} clashes with the saved voice {same!r} (names "
                              "are compared ignoring case)")
        if same is not None and not overwrite:
            raise VoiceExists(f"voice {name!r} exists; send `overwrite: true` to replace it")
        others = [(n, s) for n, s in entries if n != name]
        if len(others) >= self.store.max_saved:
            raise VoiceStoreFull(
                f"{len(others)} voices are saved, the limit (AUDIOSERVE_TTS_MAX_SAVED_VOICES"
                f" = {self.store.max_saved}); DELETE /v1/voices/<name> one first")
        used = sum(s for _, s in others)
        if used + size > self.store.max_bytes:
            raise VoiceStoreFull(
                f"saved voices take {used} bytes; this one ({size} bytes) would pass the "
                f"limit (AUDIOSERVE_TTS_SAVED_VOICES_MAX_BYTES = {self.store.max_bytes}); "
                "DELETE /v1/voices/<name> one first")

    def _entries(self) -> list[tuple[str, int]]:
        """(name, bytes) of every voice file; other files in the folder are ignored."""
        if not self.root.is_dir():
            return []
        out = []
        with os.scandir(self.root) as it:
            for entry in it:
                stem, dot, ext = entry.name.rpartition(".")
                if dot and ext == "json" and NAME.fullmatch(stem):
                    try:  # a DELETE may remove it between the scan and the stat
                        if entry.is_file():
                            out.append((stem, entry.stat().st_size))
                    except FileNotFoundError:
                        continue
        return out

    def _read(self, name: str, size: int) -> Voice | None:
        """One saved voice, or None (logged) when its file is unreadable."""
        path = self.root / f"{name}.json"
        try:
            with path.open("rb") as f:
                raw = json.loads(f.read(size + 1))
            return Voice(name=name, source=VoiceSource(raw.get("source", "spk_emb")),
                         spk_emb=str(raw["spk_emb"]), seed=raw.get("seed"), mix=raw.get("mix"))
        except FileNotFoundError:  # deleted since it was listed
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("skipping unreadable voice file %s: %s", path, exc)
            return None

    def _vector(self, spec: VoiceSpec, field: str) -> np.ndarray:
        if spec.spk_emb is not None:
            return self.decode(spec.spk_emb, field)
        parts = [(self.decode(self._known(t.name, field).spk_emb, f"saved voice {t.name!r}"),
                  t.weight) for t in spec.terms]
        return parts[0][0] if len(parts) == 1 else speakers.mix_speakers(parts)

    def _known(self, name: str, field: str) -> Voice:
        """`get` for a synthesis request: an unknown voice is a bad parameter (422)."""
        try:
            return self.get(name)
        except NotFound as exc:
            prefix = "" if field == "voice" else f"{field}: "
            raise InvalidInput(prefix + exc.message) from None
