"""Host CPU per request, per endpoint and upload format, split by where it goes.

    python -m bench.bench_host_cpu                          # tiny demo packs, CPU
    python -m bench.bench_host_cpu --models-dir models-rr --provider cuda --requests 200

The service runs as its own process with CPU probes (`bench/cpu_probe.py`, one ORT
intra-op thread so ORT's CPU is the calling thread's); this process is only the client:
`--concurrency` closed-loop connections posting prebuilt bodies (10 s uploads: 48 kHz mono
WAV, and 44.1 kHz stereo WAV, FLAC, MP3; TTS: short JSON texts). Before and after each
run it reads the server's process CPU time and probe totals, so per request:
- total: process CPU time / requests (every thread: HTTP, pool, batch workers, ORT);
- ORT: CPU inside `session.run`; outside ORT = total - ORT (the figure the targets bind);
- decode, features, batch assembly, text, sampling, post: the probed stages;
- HTTP & parsing: the rest (uvicorn, multipart/JSON parsing, routing, batchers, loop).
Next to them, the service's own per-stage wall timings (`timings_ms`) averaged over the
run. CLAP runs twice, with `clap_features=graph` and `host`.

Targets (issue 16), /classify of a 10 s 48 kHz WAV, host CPU outside ORT: <= 5 ms with
graph features, <= 8 ms with host features.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from bench.bodies import BOUNDARY, multipart
from bench.packs import ensure_pack
from bench.server import REPO, ServerProcess, free_port, http_get, with_pythonpath

LABELS = ["dog barking", "rain", "church bells", "a man speaking", "siren"]
TTS_TEXTS = ["Hello from the host CPU benchmark.", "Short one.",
             "A slightly longer sentence, with a clause, for the text front-end."]
TARGETS_MS = {"graph": 5.0, "host": 8.0}
CATEGORIES = ("decode", "features", "batch assembly", "text", "sampling", "kv cache", "post")


@dataclass(frozen=True)
class Upload:
    name: str
    body: bytes
    filename: str


def _signal(seconds: float, rate: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(rate + channels)
    t = np.arange(int(seconds * rate)) / rate
    cols = [0.2 * np.sin(2 * np.pi * (300 + 200 * k) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * t))
            + 0.02 * rng.standard_normal(t.size) for k in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


def uploads(seconds: float) -> list[Upload]:
    """10 s of audio as clients send it: the target case (48 kHz mono WAV) and 44.1 kHz
    stereo in the three common formats."""
    import av

    out = []
    for name, rate, channels, fmt in (("wav 48k mono", 48000, 1, "WAV"),
                                      ("wav 44.1k stereo", 44100, 2, "WAV"),
                                      ("flac 44.1k stereo", 44100, 2, "FLAC")):
        buf = io.BytesIO()
        sf.write(buf, _signal(seconds, rate, channels), rate, format=fmt, subtype="PCM_16")
        out.append(Upload(name, buf.getvalue(), "clip." + fmt.lower()))
    buf = io.BytesIO()
    samples = _signal(seconds, 44100, 2)
    with av.open(buf, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=44100, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T), format="fltp",
                                           layout="stereo")
        frame.sample_rate = 44100
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    out.append(Upload("mp3 44.1k stereo", buf.getvalue(), "clip.mp3"))
    return out


@dataclass
class Run:
    endpoint: str
    upload: str
    features: str
    requests: int = 0
    errors: int = 0
    wall_s: float = 0.0
    cpu_ms: dict[str, float] = field(default_factory=dict)
    """Per request: total, ort, outside, each category, http."""
    stage_ms: dict[str, float] = field(default_factory=dict)
    """The service's own timings, mean per request."""


def _request(conn: http.client.HTTPConnection, path: str, body: bytes,
             content_type: str) -> tuple[int, dict[str, float]]:
    conn.request("POST", path, body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    data = response.read()
    timings: dict[str, float] = {}
    if response.status == 200 and response.getheader("content-type", "").startswith(
            "application/json"):
        timings = {k: float(v) for k, v in json.loads(data).get("timings_ms", {}).items()}
    elif response.status == 200:
        header = response.getheader("X-Audioserve-Timings-Ms") or ""
        for part in filter(None, header.split(";")):
            key, _, value = part.partition("=")
            timings[key] = float(value)
    return response.status, timings


def closed_loop(port: int, path: str, bodies: list[bytes], content_type: str,
                requests: int, concurrency: int) -> tuple[int, int, list[dict[str, float]]]:
    """`requests` POSTs over `concurrency` keep-alive connections; (ok, errors, timings)."""
    lock = threading.Lock()
    sent = [0]
    ok, errors, timings = [0], [0], []

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                if sent[0] >= requests:
                    break
                n = sent[0]
                sent[0] += 1
            status, t = _request(conn, path, bodies[n % len(bodies)], content_type)
            with lock:
                if status == 200:
                    ok[0] += 1
                    timings.append(t)
                else:
                    errors[0] += 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ok[0], errors[0], timings


def _snapshot(server: ServerProcess) -> dict[str, Any]:
    status, body = http_get(server.url + "/bench/cpu")
    if status != 200:
        raise RuntimeError(f"/bench/cpu answered {status}")
    return dict(json.loads(body))


def measure(server: ServerProcess, endpoint: str, upload: str, features: str, path: str,
            bodies: list[bytes], content_type: str, requests: int, concurrency: int) -> Run:
    closed_loop(server.port, path, bodies, content_type, max(2, concurrency), concurrency)
    before = _snapshot(server)
    t0 = time.perf_counter()
    ok, errors, timings = closed_loop(server.port, path, bodies, content_type, requests,
                                      concurrency)
    run = Run(endpoint, upload, features, ok, errors, time.perf_counter() - t0)
    after = _snapshot(server)
    n = max(ok, 1)
    probes = {k: (after["probes_s"].get(k, 0.0) - before["probes_s"].get(k, 0.0)) * 1000 / n
              for k in set(after["probes_s"]) | set(before["probes_s"])}
    total = (after["process_cpu_s"] - before["process_cpu_s"]) * 1000 / n
    ort = probes.pop("ort", 0.0)
    cpu = {"total": total, "ort": ort, "outside": total - ort}
    cpu.update({k: probes.get(k, 0.0) for k in CATEGORIES})
    cpu["http"] = total - ort - sum(probes.values())
    run.cpu_ms = cpu
    keys = sorted({k for t in timings for k in t})
    run.stage_ms = {k: statistics.fmean(t.get(k, 0.0) for t in timings) for k in keys}
    return run


def _server(models_dir: Path, provider: str, features: str, models: str,
            log_dir: Path) -> ServerProcess:
    env = {"AUDIOSERVE_MODELS_DIR": str(models_dir.resolve()), "AUDIOSERVE_MODELS": models,
           "AUDIOSERVE_PROVIDER": provider, "AUDIOSERVE_CLAP_FEATURES": features,
           "AUDIOSERVE_INTRA_OP_THREADS": "1", "AUDIOSERVE_LOG_LEVEL": "warning",
           "AUDIOSERVE_HOST": "127.0.0.1", "PYTHONPATH": with_pythonpath(REPO)}
    port = free_port()
    env["AUDIOSERVE_PORT"] = str(port)
    import sys

    log_dir.mkdir(parents=True, exist_ok=True)
    return ServerProcess(f"cpu-probe-{features}", [sys.executable, "-m", "bench.cpu_probe"],
                         port, env, log_path=log_dir / f"cpu-probe-{features}.log")


def run_all(models_dir: Path, provider: str, endpoints: list[str], requests: int,
            concurrency: int, seconds: float, features_modes: list[str],
            log_dir: Path, only: list[str] | None = None) -> list[Run]:
    ups = [u for u in uploads(seconds) if not only or any(o in u.name for o in only)]
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    runs: list[Run] = []
    for features in features_modes:
        wanted = [e for e in endpoints if features == "host" or e == "classify"]
        if not wanted:
            continue
        models = ",".join(sorted({"classify": "clap", "emotion": "emotion2vec",
                                  "tts": "chattts"}[e] for e in wanted))
        with _server(models_dir, provider, features, models, log_dir).start() as server:
            for endpoint in wanted:
                if endpoint == "tts":
                    bodies = [json.dumps({"text": t, "seed": 40 + i, "max_new_tokens": 32,
                                          "format": "wav"}).encode()
                              for i, t in enumerate(TTS_TEXTS)]
                    runs.append(measure(server, "tts", "json text", features, "/tts", bodies,
                                        "application/json", requests, concurrency))
                    continue
                fields = [("labels", label) for label in LABELS] if endpoint == "classify" else []
                for up in ups:
                    body = multipart(up.body, fields, filename=up.filename)
                    runs.append(measure(server, endpoint, up.name, features, f"/{endpoint}",
                                        [body], ctype, requests, concurrency))
    return runs


def report(runs: list[Run], provider: str, concurrency: int) -> str:
    head = ("| endpoint | upload | features | req | total | ORT | **outside ORT** | decode | "
            "features | batch asm | text | sampling | kv cache | post | HTTP & parsing | "
            "service timings (wall ms) |")
    lines = [f"Host CPU ms per request ({provider}, closed loop, {concurrency} connections, "
             "one ORT thread; process CPU time over the run):", "", head,
             "|" + " --- |" * 17]
    for r in runs:
        c = r.cpu_ms
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r.stage_ms.items() if k != "total")
        lines.append(
            f"| {r.endpoint} | {r.upload} | {r.features if r.endpoint == 'classify' else '-'} "
            f"| {r.requests}{f' ({r.errors} err)' if r.errors else ''} | {c['total']:.2f} | "
            f"{c['ort']:.2f} | **{c['outside']:.2f}** | "
            + " | ".join(f"{c[k]:.2f}" for k in CATEGORIES)
            + f" | {c['http']:.2f} | {stages} |")
    lines.append("")
    for r in runs:
        if r.endpoint == "classify" and r.upload == "wav 48k mono":
            target = TARGETS_MS[r.features]
            verdict = "met" if r.cpu_ms["outside"] <= target else "NOT met"
            lines.append(f"- target, /classify 10 s 48 kHz WAV, {r.features} features: host CPU "
                         f"outside ORT {r.cpu_ms['outside']:.2f} ms <= {target:g} ms: {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", type=Path, help="packs (default: tiny ones, built here)")
    p.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--endpoints", nargs="+", default=["classify", "emotion", "tts"])
    p.add_argument("--features", nargs="+", default=["graph", "host"],
                   choices=["graph", "host"], help="CLAP feature modes to run")
    p.add_argument("--requests", type=int, default=60, help="per endpoint and upload")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0, help="upload length")
    p.add_argument("--uploads", nargs="+", help="only the uploads whose name has one of "
                                                "these (e.g. 'wav 48k' mp3)")
    p.add_argument("--out", type=Path, help="also write the report (and JSON) here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = args.models_dir or Path(tmp) / "models"
        for endpoint in args.endpoints:
            model = {"classify": "clap", "emotion": "emotion2vec", "tts": "chattts"}[endpoint]
            status = ensure_pack(model, models_dir, log_dir=Path(tmp) / "logs")
            if not status.ready:
                raise SystemExit(f"{model}: {status.note}")
        runs = run_all(models_dir, args.provider, args.endpoints, args.requests,
                       args.concurrency, args.seconds, args.features,
                       (args.out or Path(tmp)) / "logs", args.uploads)
    text = report(runs, args.provider, args.concurrency)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "host_cpu.md").write_text(text + "\n")
        (args.out / "host_cpu.json").write_text(json.dumps([r.__dict__ for r in runs],
                                                           indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
