"""Live-analysis test helpers: a server with both tiny packs, a real speech stream, and a
websockets client that sends a stream and collects every event until the close."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from service.live.protocol import PROTOCOL, SERVER_EVENTS
from tests.conftest import packs_dir
from tests.tts_server import RunningServer, serve_app

PATH = "/v1/audio/analysis/stream"
LABELS = ["speech", "music", "dog barking", "rain"]


@pytest.fixture(scope="session")
def live_models_dir(tmp_path_factory: pytest.TempPathFactory, clap_models_dir: Path,
                    emotion_models_dir: Path) -> Path:
    """Both tiny packs in one models dir (links to the session's exports)."""
    return packs_dir(tmp_path_factory, "live_models", clap=clap_models_dir,
                     emotion2vec=emotion_models_dir)


def speech_stream(files: list[Path], gap_s: float = 1.5, count: int = 4) -> np.ndarray:
    """Real speech clips (48 kHz) with silences between them, as int16 values."""
    parts: list[np.ndarray] = []
    for path in files[:count]:
        samples, rate = sf.read(path, dtype="int16")
        assert rate == 48_000
        parts += [np.zeros(round(gap_s * rate), np.int16), samples]
    parts.append(np.zeros(round(gap_s * 48_000), np.int16))
    return np.concatenate(parts)


def to_rate(samples: np.ndarray, rate: int) -> np.ndarray:
    """int16 48 kHz -> int16 at `rate` (test input: the stream is then sent at that rate)."""
    import soxr

    out = soxr.resample(samples.astype(np.float32) / 32768.0, 48_000, rate, quality="HQ")
    return np.clip(np.round(out * 32768), -32768, 32767).astype(np.int16)


def wav(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    subtype = "PCM_16" if samples.dtype == np.int16 else "FLOAT"
    sf.write(buf, samples, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


@dataclass
class Transcript:
    events: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


def metric(server: RunningServer, name: str, **labels: str) -> float:
    """The sum of the samples of `name` that carry `labels`, from the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def ws_url(server: RunningServer) -> str:
    return f"ws://{server.host}:{server.port}{PATH}"


def open_stream(server: RunningServer, **kwargs: Any) -> ClientConnection:
    kwargs.setdefault("subprotocols", [PROTOCOL])
    return connect(ws_url(server), open_timeout=30, close_timeout=30, **kwargs)


def read_all(ws: ClientConnection) -> Transcript:
    """Every event until the server closes; each one checked against the protocol."""
    transcript = Transcript()
    try:
        for message in ws:
            assert isinstance(message, str), "the server sends JSON text frames only"
            SERVER_EVENTS.validate_json(message)
            transcript.events.append(json.loads(message))
    except ConnectionClosed:
        pass
    received = ws.protocol.close_rcvd
    if received is not None:
        transcript.close_code = received.code
        transcript.close_reason = received.reason
    return transcript


def frames(data: bytes, sizes: tuple[int, ...] = (4801, 9600, 333, 19_200)) -> Iterator[bytes]:
    """The bytes cut into frames of uneven sizes (mid-sample cuts included)."""
    i = k = 0
    while i < len(data):
        size = sizes[k % len(sizes)]
        yield data[i:i + size]
        i += size
        k += 1


def run_stream(server: RunningServer, config: dict[str, Any], audio: bytes,
               **connect_kwargs: Any) -> Transcript:
    with open_stream(server, **connect_kwargs) as ws:
        ws.send(json.dumps({"type": "session.config", **config}))
        for frame in frames(audio):
            ws.send(frame)
        ws.send(json.dumps({"type": "input.done"}))
        return read_all(ws)


@pytest.fixture(scope="module")
def live_server(live_models_dir: Path) -> Iterator[RunningServer]:
    with serve_app(models_dir=live_models_dir, live_max_ahead_s=1e6, live_max_pending=64,
                   live_send_buffer=10_000, max_wait_ms=20.0) as server:
        yield server
