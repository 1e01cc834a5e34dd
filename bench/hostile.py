"""A hostile corpus: requests an attacker (or a careless client) sends, as plain data.

Each `Case` is one raw HTTP request and the statuses it may get. The same corpus drives
the tests (tests/test_hostile.py: every case through the real app over a real socket,
with the /healthz guard) and the benchmark (bench/bench_hostile.py: status, time to
answer, worst /healthz latency during the case, peak RSS growth of the server). Classes
follow issue 13; several variants each. The TTS half lives in bench/hostile_tts.py.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from bench.openloop import parse_head

BOUNDARY = "hostileBoundary42"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
JSON_TYPE = "application/json"
LABELS = ["dog", "rain", "speech", "music", "car horn", "birds", "engine", "wind", "siren",
          "bell"]


@dataclass(frozen=True)
class Case:
    name: str
    klass: str
    """The class of problem (issue 13's numbering where it has one)."""
    path: str
    body: bytes = b""
    content_type: str | None = None
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    expect: tuple[int, ...] = (400, 413, 415, 422)
    """Statuses that count as handled; every case must also answer within a second."""
    api_key: bool = False
    """Run against the server that has an API key set (sent without it)."""
    note: str = ""
    """What the case did before it was fixed, or why it gets its status."""

    def request_bytes(self, host: str) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}",
                 f"Content-Length: {len(self.body)}"]
        if self.content_type:
            lines.append(f"Content-Type: {self.content_type}")
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def tone_wav(seconds: float = 1.0, rate: int = 16_000, *, amplitude: float = 0.3,
             subtype: str = "PCM_16", scale: float = 1.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    wave = amplitude * np.sin(2 * np.pi * 440 * t) * scale
    buffer = io.BytesIO()
    sf.write(buffer, wave.astype(np.float64 if subtype == "DOUBLE" else np.float32), rate,
             format="WAV", subtype=subtype)
    return buffer.getvalue()


def float_wav_with(value: float, seconds: float = 1.0, rate: int = 16_000) -> bytes:
    """A float WAV whose samples are all `value` (libsndfile writes inf/NaN as given)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.full(int(seconds * rate), value, np.float32), rate, format="WAV",
             subtype="FLOAT")
    return buffer.getvalue()


def high_rate_flac(seconds: float, rate: int = 655_350) -> bytes:
    """Zeros at the highest rate FLAC holds: a few hundred KB that decode to GBs at that
    rate (the decompression class of issue 13, item 5)."""
    buffer = io.BytesIO()
    block = np.zeros(rate, np.int16)
    with sf.SoundFile(buffer, "w", samplerate=rate, channels=1, format="FLAC",
                      subtype="PCM_16") as f:
        for _ in range(int(seconds)):
            f.write(block)
    return buffer.getvalue()


def multipart(fields: list[tuple[str, str]], audio: bytes | None,
              filename: str = "clip.wav") -> bytes:
    parts = []
    for name, value in fields:
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     .encode() + value.encode() + b"\r\n")
    if audio is not None:
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
                     f'filename="{filename}"\r\nContent-Type: audio/wav\r\n\r\n'.encode()
                     + audio + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def audio_json(audio: bytes, raw_fields: str) -> bytes:
    """A base64 JSON upload with fields written as raw JSON text (so they may hold what
    json.dumps never writes: Infinity, NaN, 5,000-digit integers)."""
    encoded = base64.b64encode(audio).decode()
    return ('{"audio": "' + encoded + '"' + (", " + raw_fields if raw_fields else "")
            + "}").encode()


def _labels(n: int = 10) -> list[tuple[str, str]]:
    return [("labels", label) for label in LABELS[:n]]


def template_cases(wav: bytes) -> list[Case]:
    bad = {
        "format spec width 2,000,000": "{label}{label:>2000000}",
        "format spec alone": "{label:>50}",
        "conversion !r": "{label!r}",
        "escaped {{label}} (no field)": "{{label}}",
        "attribute access": "{label.__class__}",
        "index access": "{label[0]}",
        "two {label} fields": "{label} and {label}",
        "positional field": "{} {label}",
        "1 MB template": "{label} " + "x" * 1_000_000,
        "unbalanced brace": "{label",
    }
    return [Case(f"template: {name}", "1 template", "/classify",
                 multipart([*_labels(), ("prompt_template", template)], wav), MULTIPART)
            for name, template in bad.items()]


def json_number_cases(wav: bytes) -> list[Case]:
    raw = {
        "top_k Infinity": '"labels": ["dog", "rain"], "top_k": Infinity',
        "top_k -Infinity": '"labels": ["dog", "rain"], "top_k": -Infinity',
        "top_k NaN": '"labels": ["dog", "rain"], "top_k": NaN',
        "top_k 1e309": '"labels": ["dog", "rain"], "top_k": 1e309',
        "top_k 5,000 digits": '"labels": ["dog", "rain"], "top_k": ' + "9" * 5000,
        "nested 2,000 deep": '"labels": ' + "[" * 2000 + "]" * 2000,
        "nested 100,000 deep": '"labels": ' + "[" * 100_000 + "]" * 100_000,
    }
    cases = [Case(f"/classify JSON: {name}", "8 parser", "/classify", audio_json(wav, f),
                  JSON_TYPE) for name, f in raw.items()]
    cases.append(Case("/classify JSON: top_k 1e300 (finite: all labels)", "8 parser",
                      "/classify", audio_json(wav, '"labels": ["dog", "rain"], "top_k": 1e300'),
                      JSON_TYPE, expect=(200,)))
    for path, fields in (("/emotion", '"trim_silence": Infinity'),
                         ("/emotion", '"granularity": ' + "[" * 3000 + "]" * 3000),
                         ("/embed/audio", '"x": ' + "9" * 5000),
                         ("/embed/audio", '"x": NaN')):
        cases.append(Case(f"{path} JSON: {fields[:30]}", "8 parser", path,
                          audio_json(wav, fields), JSON_TYPE))
    for path, body in (("/embed/text", '{"input": ' + "[" * 5000 + "]" * 5000 + "}"),
                       ("/embed/text", '{"input": "a", "encoding_format": NaN}'),
                       ("/tts", '{"text": "hi", "temperature": Infinity}'),
                       ("/tts", '{"text": "hi", "seed": ' + "9" * 5000 + "}"),
                       ("/v1/audio/speech", '{"model": "tts-1", "input": "hi", "speed": 1e309}'),
                       ("/v1/voices", '{"name": "x", "seed": -Infinity}')):
        cases.append(Case(f"{path}: {body[:40]}", "8 parser", path, body.encode(), JSON_TYPE))
    return cases


def upload_shape_cases(wav: bytes) -> list[Case]:
    many = [("labels", f"l{i}") for i in range(1100)]
    return [
        Case("multipart: 1,100 parts", "8 parser", "/classify", multipart(many, wav), MULTIPART),
        Case("multipart: two file parts", "8 parser", "/classify",
             multipart(_labels(2), wav)[: -len(f"--{BOUNDARY}--\r\n")]
             + multipart([], wav), MULTIPART),
        Case("multipart: no boundary", "8 parser", "/classify", multipart(_labels(2), wav),
             "multipart/form-data"),
        Case("multipart: cut before the end", "8 parser", "/classify",
             multipart(_labels(2), wav)[:-30], MULTIPART),
        Case("multipart: top_k sent twice", "8 parser", "/classify",
             multipart([*_labels(2), ("top_k", "1"), ("top_k", "2")], wav), MULTIPART),
        Case("multipart: unknown field", "8 parser", "/classify",
             multipart([*_labels(2), ("top-k", "1")], wav), MULTIPART),
        Case("labels: one field of 1,000,000 commas", "8 parser", "/classify",
             multipart([("labels", "," * 1_000_000)], wav), MULTIPART),
        Case("JSON: audio not base64", "8 parser", "/classify",
             b'{"audio": "%%%%", "labels": ["a"]}', JSON_TYPE),
        Case("JSON: body is a list", "8 parser", "/emotion", b"[1, 2, 3]", JSON_TYPE),
        Case("content type: text/plain", "8 parser", "/emotion", wav, "text/plain"),
    ]


def audio_cases() -> list[Case]:
    fields = _labels(3)
    flac = high_rate_flac(280)
    return [
        Case("float WAV of 1e30", "9 non-finite", "/classify",
             multipart(fields, float_wav_with(1e30)), MULTIPART),
        Case("float WAV of 1e30 (emotion)", "9 non-finite", "/emotion",
             multipart([], float_wav_with(1e30)), MULTIPART),
        Case("float WAV of inf", "9 non-finite", "/classify",
             multipart(fields, float_wav_with(float("inf"))), MULTIPART),
        Case("float WAV of NaN", "9 non-finite", "/embed/audio",
             multipart([], float_wav_with(float("nan"))), MULTIPART),
        Case("float WAV of 5000 (over the peak limit)", "9 non-finite", "/emotion",
             multipart([], float_wav_with(5000.0)), MULTIPART),
        Case("FLAC 655,350 Hz, 280 s of zeros (emotion)", "5 decompression", "/emotion",
             multipart([], flac, "zeros.flac"), MULTIPART),
        Case("FLAC 655,350 Hz, 280 s of zeros (classify: truncated)", "5 decompression",
             "/classify", multipart(fields, flac, "zeros.flac"), MULTIPART,
             expect=(200, 413, 422)),
        Case("FLAC 655,350 Hz, 280 s of zeros (embed: truncated)", "5 decompression",
             "/embed/audio", multipart([], flac, "zeros.flac"), MULTIPART,
             expect=(200, 413, 422)),
    ]


def auth_cases(wav: bytes) -> list[Case]:
    """Against a server with an API key, sent without it: 401 before any parsing."""
    big = audio_json(b"\0" * (20 * 2**20), '"labels": ["a"]')
    return [Case(f"no key: {name}", "7 auth", path, body, JSON_TYPE, expect=(401,),
                 api_key=True)
            for name, path, body in (
                ("malformed JSON /tts", "/tts", b"{not json"),
                ("malformed JSON /v1/audio/speech", "/v1/audio/speech", b"{not json"),
                ("malformed JSON /v1/voices", "/v1/voices", b"[[[["),
                ("malformed JSON /embed/text", "/embed/text", b"{"),
                ("27 MB base64 JSON /classify", "/classify", big),
                ("nested JSON /emotion", "/emotion", b"[" * 100_000),
            )]


def small_cases() -> list[Case]:
    return [
        Case("path with %0A (log forging)", "11 log", "/no%0A127.0.0.1%20-%20forged",
             method="GET", expect=(404,)),
        Case("header of 200 KB", "11 headers", "/healthz", method="GET",
             headers={"X-Junk": "x" * 200_000}, expect=(431,)),
        Case("X-Forwarded-For from loopback", "11 headers", "/healthz", method="GET",
             headers={"X-Forwarded-For": "6.6.6.6"}, expect=(200,)),
    ]


def corpus(extra: list[Callable[[], list[Case]]] | None = None) -> list[Case]:
    """Every case (the TTS half is added by the callers that serve ChatTTS)."""
    wav = tone_wav(1.0)
    from bench import hostile_output  # issue 21's cases (they build on this module)

    cases = [*template_cases(wav), *json_number_cases(wav), *upload_shape_cases(wav),
             *audio_cases(), *auth_cases(wav), *small_cases(), *hostile_output.cases()]
    for more in extra or []:
        cases += more()
    return cases


def as_json(case: Case) -> str:
    return json.dumps({"name": case.name, "class": case.klass, "path": case.path,
                       "bytes": len(case.body), "expect": list(case.expect)})


@dataclass(frozen=True)
class Answer:
    status: int
    """0: no answer (the connection closed or reset first)."""
    seconds: float
    body: bytes
    keep_alive_ok: bool | None = None
    """After the answer, whether the same connection still served a /healthz (None: the
    server closed it, as it should after a refusal it did not read the body for)."""


def send_case(host: str, port: int, case: Case, timeout_s: float = 30.0) -> Answer:
    """Send one case on a fresh connection and read the answer; then, when the server
    kept the connection open, check it still serves."""
    started = time.perf_counter()
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        # the server may answer (and close) before taking all of it: read that answer
        with contextlib.suppress(OSError):
            sock.sendall(case.request_bytes(f"{host}:{port}"))
        status, headers, data = read_response(sock)
        elapsed = time.perf_counter() - started
        closing = headers.get("connection") == "close" or status == 0
        alive: bool | None = None
        if not closing:
            try:
                sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                alive = read_response(sock)[0] == 200
            except OSError:
                alive = False
    return Answer(status, elapsed, data, alive)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one HTTP/1.1 response: by its Content-Length, else read
    to the end; status 0 when the connection closed or reset before a whole head."""
    buffer = b""
    try:
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                return 0, {}, b""
            buffer += chunk
        head, _, body = buffer.partition(b"\r\n\r\n")
        status, headers = parse_head(head)
        length = int(headers["content-length"]) if "content-length" in headers else None
        while length is None or len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, headers, body
    except (ConnectionResetError, TimeoutError):
        return 0, {}, b""
