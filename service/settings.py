"""All configuration, read once from `AUDIOSERVE_*` environment variables (or a .env file).

The one `Settings` object is built in the app factory and passed down; nothing reads the
environment at import time. The entry points build it through `service.cli`: flags over
variables, a bad value or an unknown `AUDIOSERVE_*` variable one line each, exit 2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from batcher import BatchConfig

MAX_LIST_ITEMS = 2048
"""The longest list any request field takes, HTTP or WebSocket (its schema's `maxItems`):
validation stops there, where 200,000 nulls in one list had built as many errors on the
event loop (5 s, and a 34 MB answer). Settings that count list items stay within it."""

Precision = Literal["fp32", "fp16", "int8", "auto"]
Provider = Literal["auto", "cuda", "cpu"]
LongAudioPolicy = Literal["reject", "truncate"]
TtsScheduling = Literal["continuous", "static", "sequential"]
KvCache = Literal["auto", "present", "device", "preallocated"]
ClapFeatures = Literal["auto", "graph", "host"]
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]

MODEL_NAMES = ("clap", "emotion2vec", "chattts")


UPLOAD_JSON_OVERHEAD_BYTES = 64 * 1024
"""Room for an upload's JSON fields beside its base64 audio."""


def upload_body_bytes(max_upload_bytes: int) -> int:
    """The largest body of an upload route: the audio as base64 JSON (4/3 of its bytes)."""
    return max_upload_bytes * 4 // 3 + UPLOAD_JSON_OVERHEAD_BYTES


def default_voices_dir(env: Mapping[str, str]) -> Path:
    """Where saved voices go unless `AUDIOSERVE_VOICES_DIR` says: the XDG data folder."""
    data = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "audioserve" / "voices"


class Settings(BaseSettings):
    # NaN and infinity are no limit, timeout or rate: "must be a finite number" for all
    model_config = SettingsConfigDict(env_prefix="AUDIOSERVE_", env_file=".env", extra="ignore",
                                      allow_inf_nan=False)

    # -- where models come from and how they run ------------------------------------
    models_dir: Path = Path("models")
    models: str = "auto"
    """Comma-separated packs to serve (`clap,emotion2vec,chattts`); `auto`: every pack
    found in `models_dir`, and none found fails start-up; `none`: no model at all (ready
    with no model routes, on purpose). A pack named here but missing fails start-up."""
    provider: Provider = "auto"
    """`auto`: CUDA when onnxruntime has it, else CPU (logged). `cuda`: fail without it."""
    cuda_device_id: int = Field(0, ge=0)
    intra_op_threads: int = Field(0, ge=0)
    """ONNX Runtime threads per session on CPU; 0: the cores shared out among the
    model's batch workers (every core for one worker)."""
    intra_op_spinning: bool = False
    """Let idle ORT threads spin. Off: several models share the cores, and spinning
    threads of one session slowed the others 3-5x on a 2-core machine."""
    cpu_core_gate: bool = True
    """On CPU, the analysis models' batches (CLAP, emotion2vec) take the cores in turn
    (one batch per core with the default single-threaded workers), the oldest due work
    first, instead of all at once with the kernel sharing the cores among them
    (batcher/gate.py). The TTS decoding loop and vocoder are not gated."""
    cpu_arena: bool = True
    """ORT's CPU memory arena: 20 % faster on CLAP at batch 8 here, but it holds its
    high-water mark forever (reached at start-up by the warm-up at every batch size);
    turn it off where steady memory matters more than speed."""
    pin_malloc_thresholds: bool = True
    """Pin glibc malloc's mmap and trim thresholds at start-up (service/runtime/allocator.py), so
    per-request arrays of a few MB reuse freed heap instead of a fresh mmap each, and cap
    malloc arenas at 2 (CLAP alone, 2 cores: 1.38-1.53x req/s, bench/results/malloc.md).
    False: glibc's defaults."""
    clap_precision: Precision = "auto"
    emotion2vec_precision: Precision = "auto"
    chattts_precision: Precision = "auto"
    warmup: bool = True
    load_in_background: bool = True
    """Serve /healthz (and a 503 /readyz) while packs load; False: load before serving."""

    # -- CLAP's log-mel (docs/host-work.md) --------------------------------------------
    clap_features: ClapFeatures = "auto"
    """Where CLAP's log-mel is computed: `graph` (inside the audio graph, from the 10 s
    waveform: on the GPU when there is one), `host` (numpy, in the CPU pool), `auto`:
    graph on CUDA, host on CPU, where numpy's FFT is cheaper than the graph's float64
    DFT (bench/bench_clap_features.py)."""

    # -- dynamic batching (defaults for every model) ----------------------------------
    max_batch_size: int = Field(8, ge=1, le=256)
    max_wait_ms: float = Field(5.0, ge=0, le=1000)
    """Longest the oldest queued item waits for batch-mates. Audio uploads wait only while
    others are still decoding (announced arrivals): a lone request never waits."""
    max_queue: int = Field(256, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    """A request's deadline, from admission: work not started by then is never started
    (504); requests whose predicted wait exceeds it are refused at once (503)."""
    max_in_flight: int = Field(128, ge=1)
    """Admitted requests per model; more -> 503 + Retry-After before any work is done."""
    admission_wait_fraction: float = Field(0.5, gt=0, le=1)
    """Refuse (503) when the predicted wait exceeds this share of request_timeout_s."""
    cpu_threads: int = Field(0, ge=0)
    """Threads for decoding/features/encoding; 0: one per core (at least 2)."""
    batch_workers: int = Field(0, ge=0, le=16)
    """Batches of one model that may run at once; 0: one on CUDA, two on a multi-core
    CPU, where two single-threaded batches beat one two-threaded batch (CLAP, 2 cores:
    17.1 vs 13.9 windows/s, bench/results/batch-sizing.md). ChatTTS's step loop is one."""
    adaptive_batch_size: bool = True
    """Cap batches at the size measured to give the most items per second (batcher/
    sizing.py) instead of always filling max_batch_size; results are the same."""
    bucket_by_length: bool = True
    dispatch_when_idle: bool = False
    """Run whatever is queued as soon as the worker is free instead of waiting up to
    max_wait_ms for batch-mates: lower latency at low load, smaller batches (more compute
    per item) at moderate load. See bench/bench_batcher.py."""

    # -- request limits ---------------------------------------------------------------
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    max_audio_seconds: float = Field(600.0, gt=0)
    """Hard cap on decoded audio for any endpoint (413 beyond it)."""
    classify_max_seconds: float = Field(120.0, gt=0)
    classify_long_audio: LongAudioPolicy = "truncate"
    max_labels: int = Field(256, ge=1, le=MAX_LIST_ITEMS)
    max_label_chars: int = Field(200, ge=1)
    max_template_chars: int = Field(200, ge=9)
    """Longest `prompt_template` (it holds one `{label}` and no format spec)."""
    max_embed_audio_inputs: int = Field(16, ge=1, le=MAX_LIST_ITEMS)
    """Clips in one `/v1/embeddings` request with `modality: "audio"` (together they also
    stay within `max_upload_bytes`)."""
    emotion_max_seconds: float = Field(300.0, gt=0)
    emotion_chunk_seconds: float = Field(30.0, gt=1)
    emotion_max_batch_seconds: float = Field(30.0, gt=0)
    """Audio one emotion2vec batch may hold once padded (items x the longest), in seconds:
    the graph's memory grows with it (13-19 MB a padded second at base size, fp32, CPU),
    so long chunks run one at a time while short clips still batch. At most
    `batch_workers` batches run at once; a chunk longer than this runs alone."""
    tts_max_text_chars: int = Field(2000, ge=1)
    """Longer text -> 413 (the text is well-formed, just more than this server takes)."""

    # -- TTS engine (docs/tts-engine.md) -----------------------------------------------
    tts_scheduling: TtsScheduling = "continuous"
    """`continuous`: sequences join and leave between decoding steps; `static` (wait for
    a batch, run it to completion) and `sequential` (one at a time) are baselines."""
    tts_max_active: int = Field(8, ge=1, le=256)
    """Sequences decoded together in one step."""
    tts_max_prefills: int = Field(4, ge=1)
    """New sequences prefilled per step (bounds the step time of the running ones)."""
    tts_max_waiting: int | None = Field(None, ge=1)
    """Sequences waiting for a slot before 503; default: max_queue."""
    tts_static_wait_ms: float = Field(50.0, ge=0)
    tts_kv_cache: KvCache = "auto"
    """`auto`: on the device through IO binding on CUDA, host arrays on CPU."""

    # -- TTS as users call it (docs/tts-api.md) ----------------------------------------
    tts_piece_max_chars: int = Field(200, ge=8)
    """Long text is cut at sentence, then clause marks, then spaces into pieces of at
    most this many characters, each generated as its own sequence in the same batch
    (~45 s of speech stays under ChatTTS's 2,048-token budget)."""
    tts_crossfade_ms: float = Field(10.0, ge=0, le=200)
    """Linear crossfade between the audio of consecutive pieces."""
    tts_stream_chunk_tokens: int = Field(24, ge=1)
    """A streamed response sends its first audio after this many tokens (21.3 ms each)."""
    tts_stream_max_chunk_tokens: int = Field(96, ge=1)
    """Later chunks double up to this size: each chunk decodes context + chunk +
    lookahead tokens, so longer chunks waste less decoder work."""
    tts_stream_context_tokens: int | None = Field(None, ge=0)
    """Tokens decoded left of each streamed window; default: the pack's decoder + vocos
    receptive field (exact seams)."""
    tts_stream_lookahead_tokens: int | None = Field(None, ge=1)
    """Tokens a streamed window waits for right of what it sends; default: the receptive
    field (exact seams). Smaller: earlier audio, a measured seam error."""
    tts_max_output_s: float = Field(300.0, gt=0)
    """Seconds of audio one request may produce, after `speed`. A `max_new_tokens` whose
    audio alone is longer -> 413 up front; otherwise generation stops, piece by piece in
    order, at this many seconds' worth of tokens and the answer says so
    (`X-Audioserve-Truncated-At-S`, finish reason `max_output`). A 2 KB request at speed
    0.25 and 48 kHz was a 351 MB WAV (+4.1 GB RSS) before it."""
    tts_spans_field_max_bytes: int = Field(4096, ge=0)
    """Largest `X-Audioserve-Sentences` value (each piece's span; a header of a whole
    answer, a trailer of a stream). A longer one says only how many were left out
    (`omitted=N`): at most ~16 bytes a piece, a 2000-character text of 3-character
    sentences would need ~11 KB, past the 8 KB many clients and proxies allow a field."""
    tts_encode_slots: int = Field(1, ge=1)
    """Whole-file TTS answers post-processed (stretch, resample, encode) at once; the
    others wait, so long encodes leave the rest of the CPU pool to other routes (two
    351 MB encodes kept a /classify waiting 24.6 s)."""
    voices_dir: Path = Field(default_factory=lambda: default_voices_dir(os.environ))
    """Saved voices (`POST /v1/voices`), one JSON file each; by default
    `$XDG_DATA_HOME/audioserve/voices` (`~/.local/share/audioserve/voices`): a user's data,
    never the working directory (a checkout). Replicas on several nodes need one shared
    folder (docs/cluster.md)."""

    # -- TTS voices and streams under hostile input (docs/tts-limits.md) ---------------
    tts_voice_max_chars: int = Field(4096, ge=1024)
    """Longest `voice` / `mix` / `spk_emb` value (413 beyond); a real 768-d speaker
    string is 837 characters. Checked before the value is looked at."""
    tts_voice_max_terms: int = Field(8, ge=1, le=1024)
    """Terms in a voice mix `a(2)+b(1)` (413 beyond); duplicates are merged."""
    tts_voice_max_weight: float = Field(100.0, gt=0, le=1e6)
    """Largest weight of a mix term; weights are plain decimals > 0 (422 otherwise)."""
    tts_max_saved_voices: int = Field(1000, ge=0)
    """Saved voices at most (409 beyond; DELETE /v1/voices/<name> frees one)."""
    tts_saved_voices_max_bytes: int = Field(8 * 1024 * 1024, ge=4096)
    """Total size of the saved voice files (a file is ~3 KB at real size; 409 beyond)."""
    tts_stream_buffer_tokens: int = Field(256, ge=8)
    """Tokens (21.3 ms of audio each) a streamed sequence may have generated ahead of its
    reader before its generation pauses (its slot freed, its KV cache kept)."""
    tts_stream_pieces_ahead: int = Field(2, ge=1)
    """Pieces of a streamed long text generated at once (the next starts when one is
    generated): a long stream still overlaps its pieces, and one whose client stopped
    reading holds this many sequences, not all of them, ahead of everyone else."""
    tts_max_paused: int | None = Field(None, ge=0)
    """Sequences paused at once (their KV caches stay in memory); default 4 x
    tts_max_active. A pause beyond it is refused and that sequence runs on."""
    tts_stream_stall_timeout_s: float = Field(20.0, gt=0)
    """A streaming client that takes no bytes for this long is given up: its generation
    is aborted (slot and cache freed) and its response ends mid-body (truncated)."""

    tts_slo_gap_ms: float = Field(100.0, ge=0)
    """A streamed TTS response with no playback gap longer than this counts as smooth
    (audioserve_tts_streams{result="smooth"}; service/tts/slo.py)."""

    # -- speech WebSocket, WS /v1/audio/speech/stream (docs/speech-stream.md) -------
    tts_ws_max_sessions: int = Field(64, ge=0)
    """Speech sessions open at once; one more gets `error` too_many_sessions, close 1013."""
    tts_ws_max_utterance_chars: int = Field(4000, ge=1)
    """Text of one utterance (input.text up to input.done); error text_too_long, 1009."""
    tts_ws_max_session_chars: int = Field(100_000, ge=1)
    """Text of a whole session; error text_too_long, close 1009."""
    tts_ws_idle_timeout_s: float = Field(60.0, gt=0)
    """Longest time without new text from the client while no audio is being generated
    or sent (error idle_timeout, close 1008); other messages do not count. Text left
    without a sentence end waits at most as long (end it or send input.done)."""
    tts_ws_max_session_s: float = Field(3600.0, gt=0)
    """Longest a session may stay open, whatever it sends (error session_too_long, close
    1008); a client reconnects for more."""
    tts_ws_config_timeout_s: float = Field(10.0, gt=0)
    """Time to send the first message (session.config) after connecting."""
    tts_ws_max_message_bytes: int = Field(64 * 1024, ge=1024)
    """Largest client message (error message_too_large, close 1009)."""
    tts_ws_max_pending_sentences: int = Field(16, ge=1)
    """Sentences of a session given to the engine and not yet sent whole; later ones wait
    as text (not an error), so a fast writer cannot flood the engine."""
    tts_ws_max_pending_utterances: int = Field(8, ge=1)
    """Utterances of a session begun and not yet finished (session.done or audio.cancelled
    sent), empty ones too. Not an error, as for sentences: a message that would begin one
    more waits, and the socket is not read meanwhile, so a client that sends without
    reading stalls itself and the stall timeout ends it."""

    # -- HTTP -------------------------------------------------------------------------
    host: str = Field("127.0.0.1", min_length=1)
    """An empty host listened on every interface while the log said 127.0.0.1: say
    `0.0.0.0` (or `::`) for that."""
    port: int = Field(8000, ge=0, le=65535)
    """0: a free port the system picks (the log says which)."""
    api_key: SecretStr | None = None
    """When set, every route except health, metrics and the web page needs
    `Authorization: Bearer <key>`, checked before any of the body is read."""
    docs_public: bool = False
    """With an API key set, whether /docs, /redoc and /openapi.json stay open. Off by
    default: a key means a private deployment, and the schema tells which models and
    limits it serves. Without a key everything is open anyway."""
    log_level: LogLevel = "info"
    forwarded_allow_ips: str = ""
    """Proxies trusted to set X-Forwarded-For / -Proto (comma-separated IPs or `*`).
    Empty: none, so the logged client address is the socket's and cannot be forged. Set
    it to the proxy's address (e.g. `127.0.0.1` behind a local nginx)."""

    # -- reading requests (service/edge/server.py, service/edge/read_limits.py) -------------------
    max_connections: int = Field(1024, ge=1)
    """Open connections; one more is answered 503 + Retry-After and closed."""
    header_timeout_s: float = Field(10.0, gt=0)
    """A request's line and headers must arrive within this (408 and closed)."""
    max_header_bytes: int = Field(65536, ge=1024)
    """Request line plus headers, as raw bytes (line ends and padding counted); more ->
    431 and closed."""
    max_header_fields: int = Field(100, ge=8)
    """Header fields in one request; more -> 431 and closed."""
    write_timeout_s: float = Field(30.0, gt=0)
    """A response whose unsent part does not shrink by 64 KiB within this is dropped
    (connection reset, its buffer freed): a client that stops reading cannot pin it."""
    ws_compression: bool = False
    """permessage-deflate on the WebSockets. Off: audio frames do not compress, and
    deflating them cost the speech socket's event loop a third of its time at 64 sessions
    (py-spy), plus zlib state for every open connection."""
    ws_max_pings_per_s: float = Field(10.0, gt=0)
    """Pings a WebSocket client may send a second (a burst of as many), before its
    connection is closed 1008. A pong is written outside the app's flow control, so a
    client that floods pings and reads nothing grew the server's write buffer by 20 MB/s;
    keepalive pings (one per 20 s) and browsers (none) are far below it."""
    unread_body_linger_s: float = Field(2.0, gt=0)
    """A request answered before its body was read (a refusal, a route that takes no
    body) has its connection closed after the answer; the client gets this long to stop
    sending (what it sends meanwhile is discarded) so the answer is not lost to a reset."""
    body_idle_timeout_s: float = Field(10.0, gt=0)
    """Longest pause between two pieces of a request body (408)."""
    body_timeout_s: float = Field(30.0, gt=0)
    """Time to receive a whole request body, extended by one second for every
    `body_min_rate` bytes received, so a large upload on a slow link is served while a
    client dripping bytes is cut off (408). Bodies are read before a request takes an
    admission slot, so a slow upload never holds one."""
    body_min_rate: int = Field(65536, ge=1)
    """Bytes per second that earn a body its extra reading time (see body_timeout_s); a
    body slower than this since it began loses its share of max_body_bytes_in_flight (408)
    when another body needs the room."""
    max_json_bytes: int = Field(1024 * 1024, ge=1024)
    """Body limit of the JSON-only routes (/tts, /v1/audio/speech, /v1/voices,
    /embed/text); the upload routes take `max_upload_bytes` of audio."""
    max_body_bytes_in_flight: int = Field(256 * 1024 * 1024, ge=1024 * 1024)
    """Bytes of request bodies read or held at once, process-wide, taken by Content-Length
    before reading (service/edge/read_limits.py): no room -> 503 + Retry-After, a body larger
    than all of it -> 413. At least the largest body a route takes (`upload_body_bytes`,
    `max_json_bytes`): below it start-up fails, as every larger upload would be a 413."""
    json_max_containers: int = Field(10_000, ge=16)
    """Arrays and objects in one JSON body (its `[` and `{` bytes, counted before parsing;
    400 beyond): no route takes more than a few, and millions of empty lists stalled the
    event loop ~2 s per 33 MB body."""
    json_max_items: int = Field(10_000, ge=1024)
    """Elements and members in one JSON body or WebSocket message (its `,` bytes, counted
    before parsing; 400 or close 4400 beyond): the largest list a field takes is 2,048
    items, and 200,000 invalid ones had held the event loop for 5 s in validation."""
    keep_alive_timeout_s: float = Field(5.0, gt=0)
    """Idle keep-alive connections are closed after this."""
    shutdown_timeout_s: float = Field(30.0, gt=0)
    """On SIGTERM / Ctrl-C, how long requests in flight may finish (new connections are
    refused at once); then what is left is cut and the process exits. Keep an
    orchestrator's grace period above it (docker-compose.yml's `stop_grace_period`)."""

    # -- live analysis, WS /v1/audio/analysis/stream (docs/live-analysis.md) ----------
    live_max_streams: int = Field(64, ge=0)
    """Live streams open at once; one more gets `error` too_many_streams and close 1013."""
    live_max_stream_seconds: float = Field(3600.0, gt=0)
    """Audio one stream may carry (error stream_too_long, close 1008)."""
    live_idle_timeout_s: float = Field(20.0, gt=0)
    """How far a stream may fall behind real time: the time the server waited for its
    messages beyond the duration of the audio they brought (5 % drift allowed) adds up to
    at most this (error idle_timeout, close 1008). Pauses add up; empty frames bring no
    audio."""
    live_config_timeout_s: float = Field(10.0, gt=0)
    """Time to send session.config after connecting."""
    live_max_frame_bytes: int = Field(512 * 1024, ge=4096)
    """Largest WebSocket message (error frame_too_large, close 1009; uvicorn refuses
    anything over twice this before reading it)."""
    live_max_ahead_s: float = Field(5.0, ge=0)
    """How far a stream may run ahead of real time: audio sent faster is read at real-time
    pace plus this (the client's sends wait, in TCP)."""
    live_max_pending: int = Field(4, ge=1)
    """Windows and utterances of one stream being computed at once; beyond, the next is
    skipped and a `skipped` event says so (the models are behind)."""
    live_early_emotion: bool = True
    """Start an utterance's emotion once its audio is complete (`padding_ms` of silence
    after its speech) instead of once its end is confirmed (`min_silence_ms`): its result
    comes up to the difference sooner. When the speech goes on, that work is cancelled
    (audioserve_live_early_emotion_total{outcome="wasted"})."""
    live_send_buffer: int = Field(64, ge=1)
    """Events queued for a client that is not reading; one more cuts it off (error
    slow_reader, close 1008) and cancels its work."""
    live_close_timeout_s: float = Field(5.0, gt=0)
    """Time given to send the last events and the close frame of a stream."""
    live_min_hop_s: float = Field(0.5, gt=0)
    """Smallest classify.hop_s a stream may ask for (each hop costs one CLAP window)."""
    live_allowed_origins: str = ""
    """Comma-separated origins (`https://app.example`) whose pages may open the WebSockets
    and send any HTTP method but GET/HEAD/OPTIONS (403 otherwise: a page elsewhere cannot
    post forms here); `*`: any; empty: only pages served by this server. Clients that
    send no Origin header (not browsers) are not affected."""

    # -- web page (service/routes/web.py) ------------------------------------------------------
    ui: bool = True
    """Serve the page at `/` (assets under `/ui/`); False: `/` is 404. `/docs` and
    `/redoc` are served either way."""

    @field_validator("max_body_bytes_in_flight")
    @classmethod
    def _room_for_the_largest_body(cls, value: int, info: ValidationInfo) -> int:
        upload, json_bytes = info.data.get("max_upload_bytes"), info.data.get("max_json_bytes")
        if upload is None or json_bytes is None:  # refused already, said there
            return value
        largest = max(upload_body_bytes(upload), json_bytes)
        if value < largest:
            raise ValueError(
                f"below the largest body a route takes ({largest} bytes: a base64 JSON "
                "upload of AUDIOSERVE_MAX_UPLOAD_BYTES, or AUDIOSERVE_MAX_JSON_BYTES), so "
                "every body above it would be refused; raise it or lower those")
        return value

    @property
    def upload_body_bytes(self) -> int:
        return upload_body_bytes(self.max_upload_bytes)

    def batch_config(self, **overrides: object) -> BatchConfig:
        values: dict[str, object] = {
            "max_batch_size": self.max_batch_size,
            "max_wait_ms": self.max_wait_ms,
            "max_queue": self.max_queue,
            "timeout_s": self.request_timeout_s,
            "bucket_by_length": self.bucket_by_length,
            "dispatch_when_idle": self.dispatch_when_idle,
            "adaptive_size": self.adaptive_batch_size,
        }
        values.update(overrides)
        return BatchConfig(**values)  # type: ignore[arg-type]

    def precision_for(self, model: str) -> Precision:
        precision: Precision = getattr(self, f"{model}_precision")
        return precision

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case_level(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: str) -> str:
        names = [m.strip().lower() for m in value.split(",") if m.strip()]
        if names in (["auto"], ["none"]):
            return names[0]
        unknown = [m for m in names if m not in MODEL_NAMES]
        if unknown or not names:
            raise ValueError(f"{', '.join(unknown) or 'nothing'} is not a model; allowed: "
                             f"auto, none, or some of {','.join(MODEL_NAMES)}")
        return ",".join(dict.fromkeys(names))

    def wanted_models(self) -> list[str] | None:
        """The packs named explicitly (`none`: an empty list), or None for `auto`."""
        if self.models == "auto":
            return None
        return [] if self.models == "none" else self.models.split(",")
