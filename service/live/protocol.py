"""The live-analysis protocol as data: every message of `WS /v1/audio/analysis/stream`.

Client -> server (JSON text frames unless said otherwise):

- `session.config` — first message, once:
  `{"type": "session.config",
    "input": {"format": "pcm_s16le" | "pcm_f32le" | "webm" | "ogg",
              "sample_rate": 16000, "channels": 1},
    "classify": {"labels": [...], "prompt_template": null, "top_k": null, "hop_s": 2.0} | null,
    "emotion": {"granularity": "utterance" | "frame", "vad_aggressiveness": 3,
                "min_speech_ms": 250, "min_silence_ms": 500, "padding_ms": 200,
                "max_utterance_s": 20.0, "partial_every_s": null} | null}`
  At least one of `classify` and `emotion`. For `webm`/`ogg` (Opus from MediaRecorder)
  `sample_rate` and `channels` are read from the stream and may be left out; they are
  held to the same bounds (`check_shape`).
- binary frames: audio in the configured format, any size up to AUDIOSERVE_LIVE_MAX_FRAME_BYTES.
- `{"type": "input.done"}`: no more audio; what is pending is flushed (the last partial
  window, the open utterance), then `session.done` and close 1000.
- `{"type": "session.close"}`: stop now; pending work is cancelled, `session.done`, close 1000.

Server -> client (JSON text frames); every result carries stream time, `start_s`/`end_s`:
seconds of audio received, not wall clock, to the microsecond (`round(start_s * rate)` is
the first sample at the stream's rate).

- `session.created`: `{"config": <resolved config>, "limits": {...}, "models": {...}}`.
- `classify.window`: `{"index", "start_s", "end_s", "silent", "labels": [{"label",
  "probability", "similarity"}]}` — the scores `/classify` gives for exactly the audio in
  [start_s, end_s) (CLAP's 10 s window ending there; shorter at the start of the stream).
  A window ends every `hop_s` of audio, and at `input.done`.
- `emotion.utterance`: `{"index", "start_s", "end_s", "granularity", "emotion", "scores",
  "chunks", "frames"?, "final": true}` — `/emotion`'s answer for exactly that utterance's
  audio (as found by the voice-activity detector); with `frame` granularity `frames.times_s`
  and the segments are in stream time (`/emotion`'s shifted by `start_s`).
- `emotion.partial` (only with `emotion.partial_every_s`): the same fields with
  `"final": false` — `/emotion`'s answer for the open utterance so far (from its start to
  its last voiced frame plus padding), under the index its final will have; interim and
  best effort (coalesced, skipped or cancelled, and counted, never an error). A partial of
  utterance i always arrives before the `emotion.utterance` of i.
- `skipped`: `{"task": "classify" | "emotion", "index", "start_s", "end_s", "reason"}` —
  a window or utterance that got no result: `behind` (the stream already had
  AUDIOSERVE_LIVE_MAX_PENDING results being computed), `overloaded` (the model's admission
  or queue refused it), `timeout`, `too_short` (an utterance under the model's first frame).
  Nothing is ever dropped without one.
- `error`: `{"code", "message"}` — what was wrong and what is allowed; the socket is then
  closed with the close code in `CLOSE_CODES` (see `ErrorCode`).
- `session.done`: `{"audio_s", "windows", "utterances", "skipped", "cancelled", "partials",
  "partials_coalesced", "partials_skipped", "partials_cancelled"}`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from service.errors import MAX_PROBLEMS, capped, join_problems
from service.routes.json_body import JsonLimits, lone_surrogate_problem, structure_problem
from service.settings import MAX_LIST_ITEMS

PROTOCOL = "audioserve.live.v1"
"""The subprotocol the server selects; a browser offers it beside its key (see auth)."""

InputFormat = Literal["pcm_s16le", "pcm_f32le", "webm", "ogg"]
PCM_FORMATS = ("pcm_s16le", "pcm_f32le")


class _Message(BaseModel):
    # NaN / Infinity (JSON extensions Python reads) are refused as such, not as "out of range"
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


MIN_RATE, MAX_RATE = 8_000, 192_000
MAX_CHANNELS = 8
"""What live input may be, PCM as configured or WebM/Ogg as decoded: a window is cut at
the stream's own rate, so its memory and work grow with the rate (a 10 s window of a
16 MHz stream is 640 MB of float32)."""


class InputConfig(_Message):
    format: InputFormat
    sample_rate: int | None = Field(None, ge=MIN_RATE, le=MAX_RATE)
    channels: int | None = Field(None, ge=1, le=MAX_CHANNELS)


class ClassifyConfig(_Message):
    labels: list[str] = Field(min_length=1, max_length=MAX_LIST_ITEMS)
    prompt_template: str | None = None
    top_k: int | None = Field(None, ge=1)
    hop_s: float = Field(2.0, gt=0, le=10.0)
    """A window is scored every `hop_s` seconds of audio (the window is CLAP's 10 s)."""


class EmotionConfig(_Message):
    granularity: Literal["utterance", "frame"] = "utterance"
    vad_aggressiveness: int = Field(3, ge=0, le=3)
    """webrtcvad's mode: 0 keeps most, 3 filters non-speech hardest."""
    min_speech_ms: int = Field(250, ge=30, le=10_000)
    """A voiced run shorter than this is not an utterance."""
    min_silence_ms: int = Field(500, ge=90, le=10_000)
    """Non-speech that ends an utterance."""
    padding_ms: int = Field(200, ge=0, le=1000)
    """Audio kept before the first and after the last voiced frame."""
    max_utterance_s: float = Field(20.0, ge=1.0, le=300.0)
    """An utterance that runs this long is cut there (and the next one starts)."""
    partial_every_s: float | None = Field(None, ge=0.5, le=60.0)
    """An `emotion.partial` each time the open utterance has grown this much (None: off)."""


class SessionConfig(_Message):
    type: Literal["session.config"]
    input: InputConfig
    classify: ClassifyConfig | None = None
    emotion: EmotionConfig | None = None


class InputDone(_Message):
    type: Literal["input.done"]


class SessionClose(_Message):
    type: Literal["session.close"]


ClientMessage = Annotated[SessionConfig | InputDone | SessionClose, Field(discriminator="type")]
CLIENT_MESSAGES: TypeAdapter[SessionConfig | InputDone | SessionClose] = TypeAdapter(
    ClientMessage)


# -- server -> client ----------------------------------------------------------------

class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SessionCreated(_Event):
    type: Literal["session.created"] = "session.created"
    config: dict[str, Any]
    limits: dict[str, Any]
    models: dict[str, Any]


class LabelScoreOut(_Event):
    label: str
    probability: float
    similarity: float


class ClassifyWindow(_Event):
    type: Literal["classify.window"] = "classify.window"
    index: int
    start_s: float
    end_s: float
    silent: bool
    labels: list[LabelScoreOut]


class _EmotionResult(_Event):
    index: int
    start_s: float
    end_s: float
    granularity: Literal["utterance", "frame"]
    emotion: dict[str, Any]
    scores: list[dict[str, Any]]
    chunks: int
    frames: dict[str, Any] | None = None


class EmotionUtterance(_EmotionResult):
    type: Literal["emotion.utterance"] = "emotion.utterance"
    final: Literal[True] = True


class EmotionPartial(_EmotionResult):
    """The open utterance so far (interim: the `emotion.utterance` of its index follows)."""

    type: Literal["emotion.partial"] = "emotion.partial"
    final: Literal[False] = False


SkipReason = Literal["behind", "overloaded", "timeout", "too_short"]
Task = Literal["classify", "emotion"]


class Skipped(_Event):
    type: Literal["skipped"] = "skipped"
    task: Task
    index: int
    start_s: float
    end_s: float
    reason: SkipReason
    message: str


ErrorCode = Literal[
    "invalid_message", "invalid_config", "unsupported_audio", "frame_too_large",
    "stream_too_long", "idle_timeout", "config_timeout", "slow_reader", "too_many_streams",
    "model_not_loaded", "internal_error",
]

CLOSE_CODES: dict[str, int] = {
    "invalid_message": 4400, "invalid_config": 4400,
    "unsupported_audio": 1003,
    "frame_too_large": 1009,
    "stream_too_long": 1008, "idle_timeout": 1008, "config_timeout": 1008, "slow_reader": 1008,
    "too_many_streams": 1013,
    "model_not_loaded": 4503,
    "internal_error": 1011,
}
"""The close code that follows each `error` (1000 after `session.done`)."""


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str


class SessionDone(_Event):
    type: Literal["session.done"] = "session.done"
    audio_s: float
    windows: int
    utterances: int
    skipped: int
    cancelled: int
    partials: int = 0
    """`emotion.partial` events sent; the other partials were coalesced (one was still
    being computed), skipped (the stream was at live_max_pending, or the model refused it)
    or cancelled (its final came first, a final needed its place, or the stream ended)."""
    partials_coalesced: int = 0
    partials_skipped: int = 0
    partials_cancelled: int = 0


ServerEvent = Annotated[
    SessionCreated | ClassifyWindow | EmotionUtterance | EmotionPartial | Skipped | ErrorEvent
    | SessionDone,
    Field(discriminator="type"),
]
SERVER_EVENTS: TypeAdapter[Any] = TypeAdapter(ServerEvent)
"""For clients and tests: `SERVER_EVENTS.validate_json(text)` types any server event."""


class ProtocolError(Exception):
    """A client mistake: sent as an `error` event, then the socket closes with its code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = capped(message)

    @property
    def close_code(self) -> int:
        return CLOSE_CODES[self.code]

    def event(self) -> ErrorEvent:
        return ErrorEvent(code=self.code, message=self.message)


def check_shape(rate: int, channels: int, source: str) -> None:
    """Hold what an encoded stream says of itself (its header, then each decoded frame) to
    the bounds a PCM config is held to; `source` names it in the message."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError("unsupported_audio", f"{source} is at {rate} Hz; live input must "
                            f"be {MIN_RATE}-{MAX_RATE} Hz: resample it before streaming")
    if not 1 <= channels <= MAX_CHANNELS:
        raise ProtocolError("unsupported_audio", f"{source} has {channels} channels; live "
                            f"input may have 1-{MAX_CHANNELS}: downmix it before streaming")


def validation_problems(exc: ValidationError, text: str) -> str:
    """What was wrong with client message `text`, on one line: each field and why (five
    at most), for the `error` event of every live protocol."""
    errors = exc.errors()  # built once: up to JSON_MAX_ITEMS of them
    if any(e["type"] == "json_invalid" for e in errors) and (
            problem := lone_surrogate_problem(text)) is not None:
        return problem
    problems = [f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}"
                for e in errors[:MAX_PROBLEMS]]
    return join_problems(problems, len(errors))


def parse_client_message(text: str, limits: JsonLimits
                         ) -> SessionConfig | InputDone | SessionClose:
    """The one place client JSON is validated; what is wrong comes back as a ProtocolError.
    The HTTP bodies' bounds on arrays and elements hold first (a 512 KB config of 100,000
    nulls held the event loop for a second in validation)."""
    if (problem := structure_problem(text, limits, "the message")) is not None:
        raise ProtocolError("invalid_message", problem)
    try:
        return CLIENT_MESSAGES.validate_json(text)
    except ValidationError as exc:
        raise ProtocolError(
            "invalid_message",
            f"{validation_problems(exc, text)} (messages: session.config first, then binary "
            "audio frames, input.done or session.close)") from None
