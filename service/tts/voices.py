"""Named voices: seeded defaults, saved `spk_emb` strings, and weighted mixes of both.

Defaults are seeds, not files: a speaker's dimension and statistics belong to the pack
(768-d for the real model, 32-d for the tiny one), so each default is materialised from
the loaded pack's spk_stat at start-up, exactly as upstream's `sample_random_speaker`
after `torch.manual_seed(seed)`. They carry OpenAI's voice names, so clients that send
`alloy` get a stable voice. Saved voices are one JSON file per voice in `voices_dir`
holding the upstream-format `spk_emb` string (portable to any ChatTTS user) and where it
came from. Names are `[A-Za-z0-9_-]{1,64}`: no dots or slashes, so a name is never a path.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from service.errors import ApiError, InvalidInput, NotFound
from service.tts import speaker as speakers

DEFAULT_VOICE_SEEDS: dict[str, int] = {
    "alloy": 2, "ash": 11, "ballad": 23, "coral": 42, "echo": 77, "fable": 111, "nova": 402,
    "onyx": 888, "sage": 1234, "shimmer": 2024, "verse": 4096,
}
NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


class VoiceSource(StrEnum):
    SEED = "seed"
    SPK_EMB = "spk_emb"
    MIX = "mix"


class VoiceExists(ApiError):
    status, code = 409, "voice_exists"


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


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise InvalidInput(f"voice name {name!r} is not allowed: use 1-64 letters, digits, "
                           "'_' or '-'")
    return name


class VoiceStore:
    """Voices of one pack: seeded defaults plus the files in `root`."""

    def __init__(self, root: Path, stats: speakers.SpeakerStats) -> None:
        self.root = root
        self.stats = stats
        self._lock = threading.Lock()
        self._defaults = {
            name: Voice(name, VoiceSource.SEED, speakers.encode_spk_emb(
                speakers.sample_speaker(stats, seed)), builtin=True, seed=seed)
            for name, seed in DEFAULT_VOICE_SEEDS.items()
        }

    def all(self) -> list[Voice]:
        saved = {v.name: v for v in self._saved()}
        return [*self._defaults.values(),
                *(saved[n] for n in sorted(saved) if n not in self._defaults)]

    def get(self, name: str) -> Voice:
        if name in self._defaults:
            return self._defaults[name]
        path = self.root / f"{check_name(name)}.json"
        if not path.is_file():
            known = ", ".join(v.name for v in self.all())
            raise NotFound(f"voice {name!r} is not known; known voices: {known}")
        return _read(path)

    def save(self, name: str, *, seed: int | None = None, spk_emb: str | None = None,
             mix: str | None = None, overwrite: bool = False) -> Voice:
        """Store a voice from exactly one of a seed, an `spk_emb` string or a mix."""
        check_name(name)
        if sum(x is not None for x in (seed, spk_emb, mix)) != 1:
            raise InvalidInput("send exactly one of `seed`, `spk_emb` or `mix`")
        if name in self._defaults:
            raise VoiceExists(f"voice {name!r} is a built-in default; pick another name")
        if seed is not None:
            voice = Voice(name, VoiceSource.SEED, speakers.encode_spk_emb(
                speakers.sample_speaker(self.stats, seed)), seed=seed)
        elif spk_emb is not None:
            self._decode(spk_emb, "spk_emb")
            voice = Voice(name, VoiceSource.SPK_EMB, spk_emb)
        else:
            assert mix is not None
            voice = Voice(name, VoiceSource.MIX, speakers.encode_spk_emb(self.resolve(mix)),
                          mix=mix)
        path = self.root / f"{name}.json"
        with self._lock:
            if path.exists() and not overwrite:
                raise VoiceExists(f"voice {name!r} exists; send `overwrite: true` to replace it")
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"name": name, "source": voice.source.value,
                                       "seed": seed, "mix": mix, "spk_emb": voice.spk_emb}),
                           encoding="utf-8")
            tmp.replace(path)
        return voice

    def resolve(self, spec: str) -> np.ndarray:
        """A voice name, a mix `a(2)+b(1)`, or a raw `spk_emb` string -> speaker vector."""
        spec = spec.strip()
        if not NAME.match(spec) and "+" not in spec and "(" not in spec:
            return self._decode(spec, "voice")
        try:
            terms = speakers.parse_voice_mix(spec)
        except ValueError as exc:
            raise InvalidInput(f"voice {spec!r}: {exc}") from None
        parts = [(self._decode(self._known(name).spk_emb, f"voice {name!r}"), weight)
                 for name, weight in terms]
        return parts[0][0] if len(parts) == 1 else speakers.mix_speakers(parts)

    def _known(self, name: str) -> Voice:
        """`get` for a synthesis request: an unknown voice is a bad parameter (422)."""
        try:
            return self.get(name)
        except NotFound as exc:
            raise InvalidInput(exc.message) from None

    def _decode(self, text: str, what: str) -> np.ndarray:
        try:
            return speakers.decode_spk_emb(text, self.stats.dim)
        except ValueError as exc:
            raise InvalidInput(f"{what} is neither a known voice nor a speaker string for "
                               f"this model ({self.stats.dim}-d): {exc}") from None

    def _saved(self) -> list[Voice]:
        if not self.root.is_dir():
            return []
        return [_read(p) for p in sorted(self.root.glob("*.json")) if NAME.match(p.stem)]


def _read(path: Path) -> Voice:
    raw = json.loads(path.read_text(encoding="utf-8"))
    return Voice(name=path.stem, source=VoiceSource(raw.get("source", "spk_emb")),
                 spk_emb=raw["spk_emb"], seed=raw.get("seed"), mix=raw.get("mix"))
