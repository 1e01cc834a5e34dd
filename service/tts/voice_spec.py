"""The one parser of voice specs: `voice` on `/tts` and `/v1/audio/speech`, `mix` on
`POST /v1/voices`. Every cap applies before any work that grows with the spec.

A spec is a voice name (`alloy`), a weighted mix (`alloy(2)+echo(1)`, a bare name weighs
1) or a raw upstream `spk_emb` string (base16384 text: code points U+4E00-U+8DFF plus one
U+3D0x tail marker, never `+` or `(`). The caps, in the order they apply:

1. length: at most `max_chars` characters (checked in O(1), before anything else);
2. terms: at most `max_terms` `+`-separated terms (counted before splitting);
3. each term: a name that full-matches `[A-Za-z0-9_-]{1,64}` (a trailing newline is not
   part of a name), and a weight written as a plain decimal of at most 6 digits either
   side of the point, so it is always finite (400 nines overflowed to inf, then NaN),
   in (0, max_weight].

Duplicates are merged by adding their weights (`a+a` is `a(2)`), so a mix costs one
lookup per distinct voice. `VoiceSpec.normalised` is the canonical text of a mix: what a
saved voice stores, never the raw input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from service.errors import InvalidInput, PayloadTooLarge

NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}")
"""A voice name (always used with `fullmatch`): no dots, slashes or spaces, never a path."""
_WEIGHT = r"[0-9]{1,6}(?:\.[0-9]{1,6})?|\.[0-9]{1,6}"
_TERM = re.compile(rf"\s*({NAME.pattern})\s*(?:\(\s*({_WEIGHT})\s*\))?\s*")
_SPK_EMB = re.compile(r"\s*[\u4e00-\u8dff]+[\u3d00-\u3d0f]?\s*")


@dataclass(frozen=True)
class VoiceLimits:
    """The caps of a voice spec (settings `AUDIOSERVE_TTS_VOICE_*`)."""

    max_chars: int = 4096
    max_terms: int = 8
    max_weight: float = 100.0


@dataclass(frozen=True)
class VoiceTerm:
    name: str
    weight: float


@dataclass(frozen=True)
class VoiceSpec:
    """A parsed spec: either merged mix terms (a lone name is one term) or a speaker string."""

    terms: tuple[VoiceTerm, ...] = ()
    spk_emb: str | None = None

    @property
    def normalised(self) -> str:
        """`a(2)+b(1)`; a lone name of weight 1 is just the name."""
        if self.spk_emb is not None:
            return self.spk_emb
        if len(self.terms) == 1 and self.terms[0].weight == 1.0:
            return self.terms[0].name
        return "+".join(f"{t.name}({t.weight:g})" for t in self.terms)


def parse_voice_spec(spec: str, limits: VoiceLimits, field: str = "voice") -> VoiceSpec:
    """Text -> VoiceSpec, or a 4xx naming the rule or the limit that was broken."""
    if len(spec) > limits.max_chars:
        raise PayloadTooLarge(
            f"{field} has {len(spec)} characters; the limit is {limits.max_chars} "
            "(AUDIOSERVE_TTS_VOICE_MAX_CHARS)")
    if not spec.strip():
        raise InvalidInput(f"{field} is empty; GET /v1/voices lists the voices")
    if _SPK_EMB.fullmatch(spec):
        return VoiceSpec(spk_emb=spec.strip())
    count = spec.count("+") + 1
    if count > limits.max_terms:
        raise PayloadTooLarge(
            f"{field} mixes {count} terms; the limit is {limits.max_terms} "
            "(AUDIOSERVE_TTS_VOICE_MAX_TERMS)")
    merged: dict[str, float] = {}
    for part in spec.split("+"):
        name, weight = _term(part, limits, field)
        merged[name] = merged.get(name, 0.0) + weight
    return VoiceSpec(terms=tuple(VoiceTerm(n, w) for n, w in merged.items()))


def _term(part: str, limits: VoiceLimits, field: str) -> tuple[str, float]:
    match = _TERM.fullmatch(part)
    if match is None:
        raise InvalidInput(
            f"{field}: bad term {part.strip()[:80]!r}: expected a voice name "
            "([A-Za-z0-9_-], 1-64 characters) or name(weight) with a decimal weight "
            "(at most 6 digits either side of the point), terms joined by '+', or a "
            "speaker (spk_emb) string")
    name, text = match.group(1), match.group(2)
    weight = float(text) if text else 1.0
    if not 0.0 < weight <= limits.max_weight:
        raise InvalidInput(
            f"{field}: weight of {name!r} is {text}; weights must be > 0 and at most "
            f"{limits.max_weight:g} (AUDIOSERVE_TTS_VOICE_MAX_WEIGHT)")
    return name, weight
