"""Hostile TTS requests as plain data, for the hostile-corpus benchmark and the tests.

Each case is one `bench.hostile.Case` (the corpus's one request type): a JSON request
and the exact status it must get. They cover issue 13's TTS classes: voice specs (item
2), saved voices (item 3) and the smaller voice items (11). Every case must be answered
in well under a second without stalling the event loop. Slow-reader cases (item 6) are
not single requests; `STALLED_READERS` describes them for a client that sends the
request and then never reads.

`cases(spk_dim)` builds them; `spk_dim` is the loaded pack's speaker dimension (768 real,
32 tiny) so that the `spk_emb` cases are otherwise valid and fail only for the reason
they name. Voice names saved by the cases start with `hostile-`.
"""

from __future__ import annotations

import json
import lzma
from dataclasses import dataclass

import numpy as np
import pybase16384 as b14

from bench.hostile import Case

_LZMA = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def _speaker(dim: int, tail: bytes = b"") -> str:
    """An upstream-format speaker string (valid for `dim`), with `tail` bytes appended
    after the LZMA2 stream before the base16384 encoding."""
    data = np.random.default_rng(13).standard_normal(dim).astype("<f2").tobytes()
    return b14.encode_to_string(lzma.compress(data, format=lzma.FORMAT_RAW,
                                              filters=_LZMA) + tail)


_CLASSES = {"2": "2 voice specs", "3": "3 saved voices", "11": "11 voices"}


def _case(name: str, item: str, path: str, body: dict[str, object], expect: int,
          status: int, note: str, method: str = "POST") -> Case:
    assert expect == status
    return Case(name, _CLASSES[item], path, json.dumps(body).encode(), "application/json",
                method, expect=(status,), note=note)


def _tts(voice: str, **extra: object) -> dict[str, object]:
    return {"text": "hello there", "voice": voice, "max_new_tokens": 8, **extra}


def _speech(voice: str) -> dict[str, object]:
    return {"model": "tts-1", "input": "hello there", "voice": voice, "stream": False}


def cases(spk_dim: int = 768) -> list[Case]:
    nines = "9" * 400
    good = _speaker(spk_dim)
    return [
        # -- item 2: voice specs ------------------------------------------------------
        _case("tts-voice-150k-terms", "2", "/tts", _tts("alloy+" * 150_000 + "alloy"), 413,
              413, "900 KB of mix under the JSON limit: refused by length before parsing"),
        _case("tts-voice-9-terms", "2", "/tts", _tts("+".join(["alloy", "echo", "ash"] * 3)),
              413, 413, "one term over AUDIOSERVE_TTS_VOICE_MAX_TERMS (8)"),
        _case("tts-voice-weight-400-nines", "2", "/tts", _tts(f"alloy({nines})"), 422, 422,
              "overflowed to inf, then NaN noise with 200"),
        _case("tts-voice-weight-400-nines-mixed", "2", "/tts",
              _tts(f"alloy({nines})+echo(1)"), 422, 422, "the NaN mix"),
        _case("tts-voice-weight-inf", "2", "/tts", _tts("alloy(inf)+echo"), 422, 422,
              "not a plain decimal"),
        _case("tts-voice-weight-1e309", "2", "/tts", _tts("alloy(1e309)"), 422, 422,
              "exponent notation is not a weight"),
        _case("tts-voice-weight-zero", "2", "/tts", _tts("alloy(0)+echo(1)"), 422, 422,
              "weights must be > 0"),
        _case("tts-voice-weight-over-max", "2", "/tts", _tts("alloy(1000)+echo"), 422, 422,
              "over AUDIOSERVE_TTS_VOICE_MAX_WEIGHT (100)"),
        _case("tts-voice-weight-7-decimals", "2", "/tts", _tts("alloy(0.0000001)"), 422, 422,
              "more than 6 digits after the point"),
        _case("tts-voice-duplicates-merged", "2", "/tts", _tts("alloy+alloy+alloy+echo"), 200,
              200, "duplicates merge into alloy(3)+echo(1): one lookup each"),
        _case("tts-voice-unicode-digits", "2", "/tts", _tts("alloy(٣)"), 422, 422,
              "Arabic-Indic digits are not a weight"),
        _case("speech-voice-150k-terms", "2", "/v1/audio/speech",
              _speech("alloy+" * 150_000 + "alloy"), 413, 413, "same cap on the OpenAI route"),
        _case("speech-voice-weight-400-nines", "2", "/v1/audio/speech",
              _speech(f"alloy({nines})"), 422, 422, "same rule on the OpenAI route"),
        _case("tts-voice-spaces-900k", "2", "/tts", _tts("alloy" + " " * 900_000), 413, 413,
              "trailing spaces count toward the length cap"),
        # -- item 3: saved voices -----------------------------------------------------
        _case("voices-mix-spaces-900k", "3", "/v1/voices",
              {"name": "hostile-spaces", "mix": "alloy" + " " * 900_000}, 413, 413,
              "was stored raw (30 MB accepted); now the length cap refuses it"),
        _case("voices-mix-9-terms", "3", "/v1/voices",
              {"name": "hostile-terms", "mix": "+".join(["alloy", "echo", "ash"] * 3)}, 413,
              413, "the mix cap applies to saved voices too"),
        _case("voices-mix-nan-weight", "3", "/v1/voices",
              {"name": "hostile-nan", "mix": f"alloy({nines})+echo"}, 422, 422,
              "a saved voice that would be unusable from then on"),
        _case("voices-name-trailing-newline", "3", "/v1/voices",
              {"name": "hostile-nl\n", "seed": 1}, 422, 422, "`$` matched before the newline"),
        _case("voices-name-case-of-builtin", "3", "/v1/voices", {"name": "Alloy", "seed": 1},
              409, 409, "case variant of a built-in"),
        _case("voices-name-upper-builtin", "3", "/v1/voices", {"name": "ECHO", "seed": 1},
              409, 409, "case variant of a built-in"),
        _case("voices-name-unicode", "3", "/v1/voices", {"name": "hostile-ñ", "seed": 1},
              422, 422, "names are ASCII"),
        _case("voices-delete-builtin", "3", "/v1/voices/alloy", {}, 409, 409,
              "built-ins cannot be deleted", method="DELETE"),
        # -- item 11: spk_emb strings and unknown voices --------------------------------
        _case("tts-spk-emb-trailing-bytes", "11", "/tts",
              {"text": "hi", "spk_emb": _speaker(spk_dim, b"\x00" * 64), "max_new_tokens": 8},
              422, 422, "bytes after the LZMA2 stream"),
        _case("tts-spk-emb-trailing-ascii", "11", "/tts",
              {"text": "hi", "spk_emb": good + "junk", "max_new_tokens": 8}, 422, 422,
              "characters outside base16384"),
        _case("voices-spk-emb-trailing-bytes", "11", "/v1/voices",
              {"name": "hostile-tail", "spk_emb": _speaker(spk_dim, b"tail")}, 422, 422,
              "the same check when saving"),
        _case("tts-voice-spk-emb-trailing-bytes", "11", "/tts",
              _tts(_speaker(spk_dim, b"\x01" * 16)), 422, 422, "a raw string as `voice`"),
        _case("tts-spk-emb-5000-chars", "11", "/tts",
              {"text": "hi", "spk_emb": "一" * 5000, "max_new_tokens": 8}, 413, 413,
              "over AUDIOSERVE_TTS_VOICE_MAX_CHARS"),
        _case("tts-voice-unknown", "11", "/tts", _tts("hostile-ghost"), 422, 422,
              "the error names the built-ins and points to GET /v1/voices, never every "
              "saved voice"),
    ]


@dataclass(frozen=True)
class StalledReader:
    """A streaming request whose client sends it, reads nothing, and keeps the socket."""

    name: str
    path: str
    body: bytes
    note: str


STALLED_READERS = [
    StalledReader("tts-stream-pcm-48k-never-read", "/tts", json.dumps({
        "text": "a long one. " * 30, "seed": 1, "stream": True, "format": "pcm",
        "sample_rate": 48000, "max_new_tokens": 2000}).encode(),
        "pauses once its buffers fill, aborted after AUDIOSERVE_TTS_STREAM_STALL_TIMEOUT_S"),
    StalledReader("speech-stream-wav-never-read", "/v1/audio/speech", json.dumps({
        "model": "tts-1", "input": "a long one. " * 30, "voice": "alloy",
        "response_format": "wav"}).encode(), "the OpenAI route streams by default"),
]
