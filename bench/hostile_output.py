"""Issue 21's hostile requests (items 6 and 8-11) as plain `bench.hostile.Case`s.

`cases()` runs against CLAP and Emotion2Vec+ (the corpus adds it; tests/test_hostile.py
sends each over a real socket); `tts_cases()` needs ChatTTS (bench/bench_hostile.py adds
it). Before issue 21 each of these was a 500 (a 120-line traceback), a 2 s stall of the
event loop, or hundreds of MB of answer:

- 21.8 JSON structure: millions of empty lists or elements beside the audio -> 400 from a
  byte count before any tree is built.
- 21.10 parser errors: lone UTF-16 surrogates in text fields -> 422 naming the field; a
  multipart boundary over 256 characters -> 400.
- 21.11 small: unicode digits as a number, a 1-sample clip, a spike that resampling
  would smooth under the peak limit -> 422.
- 21.6 TTS output: `max_new_tokens` whose audio (after `speed`) is over
  AUDIOSERVE_TTS_MAX_OUTPUT_S -> 413 up front.
"""

from __future__ import annotations

import io
import json

import numpy as np
import soundfile as sf

from bench.hostile import JSON_TYPE, MULTIPART, Case, audio_json, multipart, tone_wav

_SURROGATE = '"\\ud800"'
"""A lone high surrogate as JSON writes it (json.dumps never would: it is raw text)."""


def spike_wav(peak: float, rate: int = 48_000, seconds: float = 1.0) -> bytes:
    """A float WAV, quiet but for one sample at `peak`: over the limit at its own rate,
    under it once resampled to 16 kHz (the low-pass spreads the spike)."""
    wave = np.zeros(int(rate * seconds), np.float32)
    wave[rate // 2] = peak
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def _structure_cases(wav: bytes) -> list[Case]:
    note = "millions of objects: the parser and GC held the GIL ~2 s per request"
    lists = audio_json(wav, '"labels": ["dog"], "pad": [' + "[]," * 2_000_000 + "[]]")
    dicts = audio_json(wav, '"labels": ["dog"], "pad": [' + "{}," * 2_000_000 + "{}]")
    zeros = audio_json(wav, '"labels": ["dog"], "pad": [' + "0," * 4_000_000 + "0]")
    nested = b'{"input": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    return [
        Case("2 M empty lists beside the audio (classify)", "21.8 JSON structure",
             "/classify", lists, JSON_TYPE, expect=(400,), note=note),
        Case("2 M empty objects beside the audio (emotion)", "21.8 JSON structure",
             "/emotion", dicts, JSON_TYPE, expect=(400,), note=note),
        Case("4 M zeros beside the audio (embed)", "21.8 JSON structure", "/embed/audio",
             zeros, JSON_TYPE, expect=(400,), note=note),
        Case("50,000-deep nesting (embed/text)", "21.8 JSON structure", "/embed/text",
             nested, JSON_TYPE, expect=(400,)),
    ]


def _parser_cases(wav: bytes) -> list[Case]:
    long_boundary = "b" * 300
    body = multipart([("labels", "dog")], wav).replace(b"hostileBoundary42",
                                                      long_boundary.encode())
    return [
        Case("lone surrogate in /embed/text input", "21.10 parser errors", "/embed/text",
             ('{"input": ["dog", ' + _SURROGATE + "]}").encode(), JSON_TYPE,
             expect=(422,), note="was a 500 from the tokenizer"),
        Case("lone surrogate as /embed/text input string", "21.10 parser errors",
             "/embed/text", ('{"input": ' + _SURROGATE + "}").encode(), JSON_TYPE,
             expect=(422,)),
        Case("lone surrogate in a /classify label", "21.10 parser errors", "/classify",
             audio_json(wav, '"labels": ["dog", ' + _SURROGATE + "]"), JSON_TYPE,
             expect=(422,)),
        Case("lone surrogate in the /classify template", "21.10 parser errors", "/classify",
             audio_json(wav, '"labels": ["dog"], "prompt_template": "{label} \\udfff"'),
             JSON_TYPE, expect=(422,)),
        Case("lone surrogate as a JSON key", "21.10 parser errors", "/classify",
             audio_json(wav, '"labels": ["dog"], ' + _SURROGATE + ": 1"), JSON_TYPE,
             expect=(422,)),
        Case("multipart boundary of 300 characters", "21.10 parser errors", "/classify",
             body, f"multipart/form-data; boundary={long_boundary}", expect=(400,),
             note="a 400 before, then a 500 (the parser's constructor raised)"),
    ]


def _small_cases(wav: bytes) -> list[Case]:
    one_sample = tone_wav(1 / 16_000)
    return [
        Case("top_k unicode superscript two", "21.11 small", "/classify",
             multipart([("labels", "dog"), ("labels", "rain"), ("top_k", "²")], wav),
             MULTIPART, expect=(422,), note="int() takes it: a Python-internals message"),
        Case("top_k Arabic-Indic three", "21.11 small", "/classify",
             audio_json(wav, '"labels": ["dog"], "top_k": "٣"'), JSON_TYPE, expect=(422,)),
        Case("1-sample clip (classify)", "21.11 small", "/classify",
             multipart([("labels", "dog")], one_sample), MULTIPART, expect=(422,),
             note="was scored"),
        Case("1-sample clip (embed)", "21.11 small", "/embed/audio",
             multipart([], one_sample), MULTIPART, expect=(422,)),
        Case("1-sample clip (emotion)", "21.11 small", "/emotion",
             multipart([], one_sample), MULTIPART, expect=(422,)),
        Case("one-sample spike of 2000 at 48 kHz (emotion)", "21.11 small", "/emotion",
             multipart([], spike_wav(2000.0)), MULTIPART, expect=(422,),
             note="resampled to 16 kHz it was under the 1000 peak limit"),
    ]


def cases() -> list[Case]:
    wav = tone_wav(1.0)
    return [*_structure_cases(wav), *_parser_cases(wav), *_small_cases(wav)]


def tts_cases() -> list[Case]:
    """Against a server with ChatTTS and the default AUDIOSERVE_TTS_MAX_OUTPUT_S."""
    def tts(**fields: object) -> bytes:
        return json.dumps({"text": "hello. " * 280, "seed": 1, **fields}).encode()

    return [
        Case("max_new_tokens 3900 at speed 0.25, 48 kHz", "21.6 TTS output", "/tts",
             tts(max_new_tokens=3900, speed=0.25, sample_rate=48000, temperature=0.01),
             JSON_TYPE, expect=(413,), note="a 351 MB WAV, +4.1 GB RSS"),
        Case("max_new_tokens 3600 at speed 0.25 (307 s)", "21.6 TTS output", "/tts",
             tts(max_new_tokens=3600, speed=0.25), JSON_TYPE, expect=(413,)),
        Case("max_new_tokens 15000 at speed 1 (320 s)", "21.6 TTS output", "/tts",
             tts(max_new_tokens=15000), JSON_TYPE, expect=(413,)),
        Case("max_new_tokens 3600 at speed 0.25, streamed", "21.6 TTS output", "/tts",
             tts(max_new_tokens=3600, speed=0.25, stream=True), JSON_TYPE, expect=(413,)),
        Case("lone surrogate in /tts text", "21.10 parser errors", "/tts",
             ('{"text": "hi ' + _SURROGATE[1:-1] + '", "max_new_tokens": 8}').encode(),
             JSON_TYPE, expect=(422,)),
    ]


