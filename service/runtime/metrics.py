"""Prometheus metrics, one registry per app (so tests and several apps never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from batcher import BatchStats

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_RTF_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2, 4, 10)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class Metrics:
    """Every metric the service exports; batchers report through `observer(queue)`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "audioserve_requests", "HTTP requests by route and status", ["route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "audioserve_request_seconds", "HTTP request latency", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge(
            "audioserve_queue_depth", "Items waiting in a batcher queue", ["queue"], registry=r
        )
        self.batch_size = Histogram(
            "audioserve_batch_size", "Items per executed batch", ["queue"],
            buckets=_BATCH_BUCKETS, registry=r,
        )
        self.batch_size_limit = Gauge(
            "audioserve_batch_size_limit",
            "Batch-size cap in force (the adaptive one, when learnt)", ["queue"], registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "audioserve_queue_wait_seconds", "Time an item waited before its batch ran",
            ["queue"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.compute_seconds = Histogram(
            "audioserve_batch_compute_seconds", "Time one batch took to run", ["queue"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.padding_fraction = Histogram(
            "audioserve_batch_padding_fraction",
            "Share of each executed batch that is padding", ["queue"],
            buckets=(0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0), registry=r,
        )
        self.batch_failures = Counter(
            "audioserve_batch_failures", "Batches whose function raised", ["queue"], registry=r
        )
        self.rejections = Counter(
            "audioserve_rejections", "Items refused by a batcher", ["queue", "reason"],
            registry=r,
        )
        self.in_flight = Gauge(
            "audioserve_in_flight", "Admitted requests not yet answered", ["model"], registry=r
        )
        self.stage_seconds = Histogram(
            "audioserve_stage_seconds", "Time per pipeline stage", ["model", "stage"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.cache_events = Counter(
            "audioserve_cache_events", "Cache hits and misses", ["cache", "event"], registry=r
        )
        self.live_streams = Gauge(
            "audioserve_live_streams", "Open live-analysis WebSocket streams", registry=r
        )
        self.live_result_lag = Histogram(
            "audioserve_live_result_lag_seconds",
            "Live result lag: the last sample of a window/utterance received -> result sent",
            ["task"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.live_skipped = Counter(
            "audioserve_live_skipped", "Live windows/utterances skipped (each said in an "
            "event)", ["task", "reason"], registry=r,
        )
        self.live_partials = Counter(
            "audioserve_live_partials", "Live emotion.partial results by outcome: sent, "
            "coalesced, behind, refused or cancelled (interim results: never an error)",
            ["outcome"], registry=r,
        )
        self.live_early_emotion = Counter(
            "audioserve_live_early_emotion", "Live utterances whose emotion started before "
            "the end-pointer confirmed them: used (the end was confirmed) or wasted (the "
            "speech went on, or the stream ended first)", ["outcome"], registry=r,
        )
        self.live_audio_seconds = Counter(
            "audioserve_live_audio_seconds", "Seconds of live audio received", registry=r
        )
        self.live_closed = Counter(
            "audioserve_live_closed", "Live streams ended: done, closed, disconnected or "
            "the error's code", ["reason"],
            registry=r,
        )

        # audio SLOs of streamed TTS, per path (http, sse, ws): service/tts/slo.py
        self.tts_first_audio = Histogram(
            "audioserve_tts_time_to_first_audio_seconds",
            "Streamed TTS: stream opened (a live utterance: its first sentence) -> first "
            "audio handed to the transport", ["path"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.tts_real_time_factor = Histogram(
            "audioserve_tts_real_time_factor",
            "Streamed TTS: wall time to the last chunk / seconds of audio (< 1: faster "
            "than real time)", ["path"], buckets=_RTF_BUCKETS, registry=r,
        )
        self.tts_chunk_interval = Histogram(
            "audioserve_tts_chunk_interval_seconds",
            "Streamed TTS: time between consecutive audio chunks", ["path"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.tts_underrun = Histogram(
            "audioserve_tts_underrun_seconds",
            "Streamed TTS: silence a player starting at the first chunk would have had, "
            "per stream", ["path"], buckets=(0, *_LATENCY_BUCKETS), registry=r,
        )
        self.tts_streams = Counter(
            "audioserve_tts_streams",
            "Streamed TTS responses that ended whole, by whether any gap exceeded "
            "AUDIOSERVE_TTS_SLO_GAP_MS (result: smooth, gapped)", ["path", "result"],
            registry=r,
        )
        self.tts_ws_sessions = Gauge(
            "audioserve_tts_ws_sessions", "Open WS /v1/audio/speech/stream sessions",
            registry=r,
        )
        self.tts_ws_utterances = Gauge(
            "audioserve_tts_ws_utterances", "Utterances of open speech sessions begun and "
            "not yet finished (session.done or audio.cancelled sent), empty ones too",
            registry=r,
        )
        self.tts_ws_closed = Counter(
            "audioserve_tts_ws_closed", "Speech WebSocket sessions ended: done, closed, "
            "disconnected or the error's code", ["reason"], registry=r,
        )
        self.tts_ws_cancelled = Counter(
            "audioserve_tts_ws_cancelled", "Utterances stopped by input.cancel", registry=r,
        )

    def observer(self, queue: str) -> QueueObserver:
        return QueueObserver(self, queue)


class QueueObserver:
    """Implements `batcher.BatchObserver` for one named queue."""

    def __init__(self, metrics: Metrics, queue: str) -> None:
        self._m = metrics
        self._queue = queue
        # every series of the queue from the start, at zero: a dashboard or an alert on
        # `rate(...)` sees the queue before its first batch, not a missing series
        metrics.queue_depth.labels(queue).set(0)
        for series in (metrics.batch_size, metrics.queue_wait_seconds,
                       metrics.compute_seconds, metrics.padding_fraction,
                       metrics.batch_failures):
            series.labels(queue)

    def on_limit(self, limit: int) -> None:
        self._m.batch_size_limit.labels(self._queue).set(limit)

    def on_queue_depth(self, depth: int) -> None:
        self._m.queue_depth.labels(self._queue).set(depth)

    def on_batch(self, stats: BatchStats) -> None:
        q = self._queue
        self._m.batch_size.labels(q).observe(stats.size)
        self._m.batch_size_limit.labels(q).set(stats.limit)
        self._m.compute_seconds.labels(q).observe(stats.compute_s)
        self._m.padding_fraction.labels(q).observe(stats.padding_fraction)
        for wait in stats.queue_waits_s:
            self._m.queue_wait_seconds.labels(q).observe(wait)
        if stats.failed:
            self._m.batch_failures.labels(q).inc()

    def on_reject(self, reason: str) -> None:
        self._m.rejections.labels(self._queue, reason).inc()
