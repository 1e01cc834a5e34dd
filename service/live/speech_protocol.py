"""The speech-stream protocol as data: every message of `WS /v1/audio/speech/stream`.

vLLM-Omni's speech WebSocket protocol, so its clients work unchanged, plus our additions
(marked +). Client -> server, JSON text frames:

- `session.config` — first message; again between utterances to change it. This service's
  `/v1/audio/speech` fields: `{"type": "session.config", "model": "tts-1", "voice": "alloy",
  "response_format": "pcm" | "wav" | "mp3" | "opus" | "aac" | "flac", "speed": 1.0,
  "seed": null, "temperature": null, "top_p": null, "top_k": null,
  "max_new_tokens": null, "min_new_tokens": null,
  "split_granularity": "sentence" | "clause" | "none"}` (all optional; null = the
  default), and every other field of vLLM-Omni's
  `StreamingSpeechSessionConfig`, each with a defined behaviour (`SessionConfig`;
  docs/speech-stream.md has the table): `speaker` = `voice`; `task_type`, `language`
  (English, Chinese or Auto), `instructions`, `initial_codec_chunk_frames`,
  `non_streaming_mode`, `x_vector_only_mode: false`, `stream_audio: false`, `request_id`,
  `session_id` are ignored and listed, with why, in `ignored` on the next utterance's first
  event; `ref_audio`, `ref_text`, `x_vector_only_mode: true`, `speaker_embedding`,
  `word_timestamps: true` and other languages get `error` invalid_config naming the field.
  A field not in either set: `error` invalid_message naming it.
- `input.text` `{"text": "..."}` — a fragment of any size (an LLM's token). Each sentence
  (with `split_granularity: "clause"` each clause) starts generating as soon as it is
  complete (`service.tts.chunking.SentenceSplitter`); with `"none"` nothing starts before
  `input.done`, then the text is cut as `/tts` cuts it (`split: "long"`).
- `input.done` — the utterance's text is complete: the rest is spoken; the socket stays
  open for the next utterance.
- + `input.cancel` — barge-in: the utterances in progress stop (their engine sequences
  leave the batch at the next step, unsent audio is dropped); the socket stays usable.
- `session.close` — stop after what was asked for is sent, then close 1000.

Server -> client:

- `audio.start` `{"utterance_index", "sentence_index", "sentence_text", "format",
  "sample_rate", "channels", "demo"+, "ignored"+}` — before the sentence's first audio.
- binary frames — the utterance's audio, in order: ONE stream per utterance in the
  configured format (pcm: 16-bit LE mono at 24 kHz). Sentences are joined by a 10 ms
  crossfade, which goes out after the next sentence's `audio.start`.
- `audio.done` `{"utterance_index", "sentence_index", "start_sample"+, "end_sample"+,
  "start_s"+, "end_s"+}` — the sentence's span in the utterance's audio, sample-exact
  (neighbours overlap by the crossfade).
- `session.done` `{"utterance_index", "total_sentences", "audio_s"+, "first_audio_s"+,
  "underrun_s"+, "truncated_at_s"+, "ignored"+}` — the utterance is sent whole, or up to
  the output cap (`truncated_at_s`).
- + `audio.cancelled` `{"utterance_index", "sent_samples", "sent_s", "sentences_done",
  "ignored"+}` — after `input.cancel`: how much of that utterance's audio was sent and how
  many of its sentences were sent whole (`audio.done`); no more of it follows.
- + `ignored` `{field: why}` — only on an utterance's first event, after a
  `session.config` that gave fields with no effect here.
- `error` `{"message", "code"+}` — then close with `CLOSE_CODES[code]`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from service.errors import capped
from service.live.protocol import validation_problems
from service.pipelines.chattts import MAX_SAMPLING_SEED, token_bounds_problem
from service.routes.json_body import JsonLimits, structure_problem
from service.settings import MAX_LIST_ITEMS
from service.tts.chunking import Split
from service.tts.sampling import MAX_TEMPERATURE, MIN_TEMPERATURE
from service.tts.stretch import MAX_SPEED, MIN_SPEED


class _Message(BaseModel):
    # NaN / Infinity (JSON extensions Python reads) are refused as such, not as "out of range"
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


Granularity = Literal["none", "sentence", "clause"]
GRANULARITY_SPLIT: dict[str, Split] = {"none": "long", "sentence": "sentence",
                                       "clause": "clause"}
"""`split_granularity` -> the `/tts` `split` that cuts the same pieces (same audio)."""

DEFAULT_VOICE = "alloy"
_OUR_LANGUAGES = re.compile(r"auto|english|chinese|mandarin|(?:en|zh|cmn)(?:[-_]\w+)*",
                            re.IGNORECASE)
_SAVED_VOICE = ("use `voice` with a built-in or saved ChatTTS voice (POST /v1/voices saves "
                "one under any name, e.g. the one this client sends; GET /v1/voices lists them)")


_Floats = Annotated[list[float], Field(max_length=MAX_LIST_ITEMS)]


class SessionConfig(_Message):
    """Our `/v1/audio/speech` fields plus every field of vLLM-Omni's
    `StreamingSpeechSessionConfig`, each with a defined behaviour: used, ignored (said in
    `ignored()`, sent on the next utterance's first event) or refused (`refused()`, an
    `error` naming the field). Anything else is refused by name (a typo shows)."""

    type: Literal["session.config"]
    model: str | None = None
    """None: chattts (vLLM-Omni's default model)."""
    voice: str | None = Field(None, validation_alias=AliasChoices("voice", "speaker"))
    """`speaker` is vLLM-Omni's alias. None: `alloy`."""
    response_format: Literal["pcm", "wav", "mp3", "opus", "aac", "flac"] = "pcm"
    speed: float | None = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED)
    seed: int | None = Field(None, ge=0, le=MAX_SAMPLING_SEED)
    """Sampling seed: sentence i of an utterance samples with seed + i (as `/tts` piece i)."""
    temperature: float | None = Field(None, ge=MIN_TEMPERATURE, le=MAX_TEMPERATURE)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, le=1000)
    max_new_tokens: int | None = Field(None, ge=1)
    """Per sentence, as `/tts`'s per piece."""
    min_new_tokens: int | None = Field(None, ge=0)
    """Per sentence, as `/tts`'s per piece (upstream's `min_new_token`)."""
    instructions: str | None = None
    split_granularity: Granularity = "sentence"
    """Where a piece ends and starts generating: each sentence, each clause too, or
    `none`: nothing before `input.done`, then the text cut as `/tts` cuts it (`long`)."""
    stream_audio: bool = True
    """vLLM-Omni's switch between a file per sentence and streamed PCM; here the audio is
    always one stream per utterance, so `false` is accepted and listed as ignored."""
    # vLLM-Omni fields that only steer Qwen3-TTS (ignored) or ask for what ChatTTS cannot
    # do (refused): see `ignored()` and `refused()`.
    task_type: Literal["CustomVoice", "VoiceDesign", "Base"] | None = None
    language: str | None = Field(None, max_length=64)
    initial_codec_chunk_frames: int | None = Field(None, ge=0)
    non_streaming_mode: bool | None = None
    ref_audio: str | Annotated[list[str], Field(max_length=MAX_LIST_ITEMS)] | None = None
    ref_text: str | None = None
    x_vector_only_mode: bool | None = None
    speaker_embedding: (_Floats | Annotated[list[_Floats], Field(max_length=MAX_LIST_ITEMS)]
                        | None) = None
    word_timestamps: bool = False
    request_id: str | None = Field(None, max_length=256)
    session_id: str | None = Field(None, max_length=256)

    @model_validator(mode="before")
    @classmethod
    def _null_is_the_default(cls, data: Any) -> Any:
        """`null` means the field's default, for every field (vLLM-Omni's clients send
        nulls for what they leave unset), not only for those whose default is None."""
        if isinstance(data, dict):
            data = {key: value for key, value in data.items() if value is not None}
            if "voice" in data and "speaker" in data:
                raise PydanticCustomError(
                    "voice_and_speaker", "`speaker` is vLLM-Omni's name for `voice`: give "
                    "one of the two, not both")
        return data

    def refused(self) -> list[str]:
        """What this config asks for that this server cannot do: one line per field."""
        problems = []
        if self.ref_audio is not None:
            problems.append("ref_audio: voice cloning from reference audio is not supported "
                            f"(ChatTTS has no speaker encoder); {_SAVED_VOICE}")
        if self.ref_text is not None:
            problems.append("ref_text: it belongs to ref_audio voice cloning, which is not "
                            f"supported; {_SAVED_VOICE}")
        if self.x_vector_only_mode:
            problems.append("x_vector_only_mode: voice cloning is not supported; "
                            + _SAVED_VOICE)
        if self.speaker_embedding is not None:
            problems.append("speaker_embedding: a Qwen3-TTS speaker vector means nothing to "
                            "ChatTTS; give a ChatTTS speaker as `voice` (a saved voice's "
                            "name, a mix, or an spk_emb string)")
        if self.word_timestamps:
            problems.append("word_timestamps: there is no word aligner here; every "
                            "audio.done carries its sentence's start_s/end_s in the "
                            "utterance's audio (split_granularity \"clause\" for finer "
                            "spans): set word_timestamps to false")
        if (bounds := token_bounds_problem(self.min_new_tokens, self.max_new_tokens)):
            problems.append(bounds)
        if self.language is not None and not _OUR_LANGUAGES.fullmatch(self.language.strip()):
            problems.append(f"language {self.language!r}: ChatTTS speaks English and Chinese; "
                            "give English, Chinese or Auto, or leave it out")
        return problems

    def ignored(self) -> dict[str, str]:
        """The fields given that have no effect here, each with why."""
        why = {
            "task_type": "a Qwen3-TTS task; ChatTTS speaks every text with `voice`",
            "language": "ChatTTS reads English and Chinese from the text itself",
            "instructions": "ChatTTS takes no style instructions",
            "initial_codec_chunk_frames": "a Qwen3-TTS chunk size; the first audio comes "
                                          "after AUDIOSERVE_TTS_STREAM_CHUNK_TOKENS tokens",
            "non_streaming_mode": "a Qwen3-TTS prompt mode; ChatTTS has none",
            "x_vector_only_mode": "no voice cloning here",
            "stream_audio": "audio is always streamed: one stream per utterance in "
                            "response_format",
            "request_id": "not used",
            "session_id": "not used",
        }
        given = {name for name in why if getattr(self, name) is not None}
        if self.stream_audio:
            given.discard("stream_audio")
        return {name: why[name] for name in why if name in given & self.model_fields_set}


class InputText(_Message):
    type: Literal["input.text"]
    text: str


class InputDone(_Message):
    type: Literal["input.done"]


class InputCancel(_Message):
    type: Literal["input.cancel"]


class SessionClose(_Message):
    type: Literal["session.close"]


ClientMessage = SessionConfig | InputText | InputDone | InputCancel | SessionClose
CLIENT_MESSAGES: TypeAdapter[ClientMessage] = TypeAdapter(
    Annotated[ClientMessage, Field(discriminator="type")])


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _FirstEvent(_Event):
    ignored: dict[str, str] | None = Field(None, exclude_if=lambda v: v is None)
    """On an utterance's first event only, after a session.config with fields that have
    no effect here: each such field and why (`SessionConfig.ignored`)."""


class AudioStart(_FirstEvent):
    type: Literal["audio.start"] = "audio.start"
    utterance_index: int
    sentence_index: int
    sentence_text: str
    format: str
    sample_rate: int
    channels: int = 1
    demo: bool = False
    """A random-weight demo pack made this audio: it means nothing (as the HTTP routes'
    `X-Audioserve-Demo: true`)."""


class AudioDone(_Event):
    type: Literal["audio.done"] = "audio.done"
    utterance_index: int
    sentence_index: int
    start_sample: int
    end_sample: int
    start_s: float
    end_s: float


class SessionDone(_FirstEvent):
    type: Literal["session.done"] = "session.done"
    utterance_index: int
    total_sentences: int
    audio_s: float = 0.0
    first_audio_s: float | None = None
    underrun_s: float = 0.0
    truncated_at_s: float | None = Field(None, exclude_if=lambda v: v is None)
    """Only when the utterance reached AUDIOSERVE_TTS_MAX_OUTPUT_S: its audio stops
    there, and its sentences after that point were not spoken."""


class AudioCancelled(_FirstEvent):
    type: Literal["audio.cancelled"] = "audio.cancelled"
    utterance_index: int
    sent_samples: int
    sent_s: float
    sentences_done: int


ErrorCode = Literal[
    "invalid_message", "invalid_config", "message_too_large", "text_too_long",
    "idle_timeout", "session_too_long", "config_timeout", "slow_reader", "too_many_sessions",
    "overloaded", "timeout", "model_not_loaded", "internal_error",
]

CLOSE_CODES: dict[str, int] = {
    "invalid_message": 4400, "invalid_config": 4400,
    "message_too_large": 1009, "text_too_long": 1009,
    "idle_timeout": 1008, "session_too_long": 1008, "config_timeout": 1008,
    "slow_reader": 1008, "too_many_sessions": 1013, "overloaded": 1013, "timeout": 1013,
    "model_not_loaded": 4503,
    "internal_error": 1011,
}
"""The close code that follows each `error` (1000 after `session.close`)."""


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str


ServerEvent = AudioStart | AudioDone | SessionDone | AudioCancelled | ErrorEvent
SERVER_EVENTS: TypeAdapter[Any] = TypeAdapter(
    Annotated[ServerEvent, Field(discriminator="type")])
"""For clients and tests: `SERVER_EVENTS.validate_json(text)` types any server event."""


class ProtocolError(Exception):
    """Sent as an `error` event, then the socket closes with its code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = capped(message)

    @property
    def close_code(self) -> int:
        return CLOSE_CODES[self.code]

    def event(self) -> ErrorEvent:
        return ErrorEvent(code=self.code, message=self.message)


def parse_client_message(text: str, limits: JsonLimits) -> ClientMessage:
    """The one place client JSON is validated; what is wrong comes back as a ProtocolError
    (the structure's bounds first, as on the live socket)."""
    if (problem := structure_problem(text, limits, "the message")) is not None:
        raise ProtocolError("invalid_message", problem)
    try:
        return CLIENT_MESSAGES.validate_json(text)
    except ValidationError as exc:
        raise ProtocolError(
            "invalid_message",
            f"{validation_problems(exc, text)} (messages: session.config, input.text, "
            "input.done, input.cancel, session.close)") from None
