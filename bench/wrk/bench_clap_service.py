"""Service benchmark: wrk against POST /classify, batching on vs max_batch_size=1.

For each mode a fresh `python -m service` is started on the given CLAP pack; wrk posts a
real multipart body (one clip, a few labels: after the first request the text side is
cached, so this measures the audio path) at each concurrency. The raw ceiling (ORT alone,
bench_clap_raw) is measured in the same run, and the table shows requests/s against it.

    python bench/wrk/bench_clap_service.py --pack models/clap --seconds 15

Needs `wrk` (apt-get install -y wrk). Clips of at most 10 s are one audio item each, so
requests/s and the raw items/s compare directly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_clap_raw import ensure_pack, measure  # noqa: E402

from service.runtime.packs import load_pack  # noqa: E402
from service.runtime.sessions import GraphRunner, RuntimeConfig, create_session  # noqa: E402

LUA = Path(__file__).with_name("clap_classify.lua")
BOUNDARY = "audioserve-bench-7d3f"
LABELS = ["dog barking", "rain", "speech", "music", "siren", "engine idling"]
SPEECH = ROOT.parent / "shared" / "data" / "speech"


def clip_bytes(seconds: float, clip: Path | None) -> tuple[bytes, str]:
    """The given clip, else a real speech clip when ../shared/data is there, else a
    synthetic tone+noise WAV."""
    if clip is not None:
        return clip.read_bytes(), clip.name
    files = sorted(SPEECH.glob("*.flac"))
    if files:
        return files[0].read_bytes(), files[0].name
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 48_000)) / 48_000
    samples = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    path = Path(tempfile.mkstemp(suffix=".wav")[1])
    sf.write(path, samples.astype(np.float32), 48_000)
    return path.read_bytes(), "synthetic.wav"


def multipart_body(audio: bytes, filename: str) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"'
        f"\r\nContent-Type: application/octet-stream\r\n\r\n".encode() + audio + b"\r\n"
    ]
    for label in LABELS:
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="labels"\r\n\r\n'
                     f"{label}\r\n".encode())
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except OSError:
        return 0, ""


def start_server(models_dir: Path, port: int, max_batch: int, wait_ms: float) -> subprocess.Popen:
    env = {**os.environ, "AUDIOSERVE_MODELS_DIR": str(models_dir), "AUDIOSERVE_MODELS": "clap",
           "AUDIOSERVE_PORT": str(port), "AUDIOSERVE_MAX_BATCH_SIZE": str(max_batch),
           "AUDIOSERVE_MAX_WAIT_MS": str(wait_ms), "AUDIOSERVE_MAX_QUEUE": "4096",
           "AUDIOSERVE_REQUEST_TIMEOUT_S": "300", "AUDIOSERVE_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if get(f"http://127.0.0.1:{port}/readyz")[0] == 200:
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("server not ready within 180 s")


def batch_counters(port: int) -> tuple[float, float]:
    text = get(f"http://127.0.0.1:{port}/metrics")[1]
    found = [re.search(rf'audioserve_batch_size_{k}\{{queue="clap_audio"\}} (\S+)', text)
             for k in ("sum", "count")]
    return tuple(float(m.group(1)) if m else 0.0 for m in found)  # type: ignore[return-value]


def run_wrk(port: int, body_file: Path, concurrency: int, seconds: float) -> dict[str, float]:
    env = {**os.environ, "BODY_FILE": str(body_file), "BOUNDARY": BOUNDARY}
    duration = f"{max(1, round(seconds))}s"
    cmd = ["wrk", "-t", str(min(concurrency, 2)), "-c", str(concurrency), "-d", duration,
           "--timeout", "120s", "-s", str(LUA), f"http://127.0.0.1:{port}/classify"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("{"))
    return json.loads(line)


def bench_mode(name: str, models_dir: Path, body: Path, args: argparse.Namespace,
               max_batch: int) -> list[dict[str, object]]:
    server = start_server(models_dir, args.port, max_batch, args.max_wait_ms)
    rows: list[dict[str, object]] = []
    try:
        run_wrk(args.port, body, 1, 2)  # warm-up: text cache, allocations
        for c in args.concurrency:
            before = batch_counters(args.port)
            result = run_wrk(args.port, body, c, args.seconds)
            after = batch_counters(args.port)
            batches = after[1] - before[1]
            mean_batch = (after[0] - before[0]) / batches if batches else 0.0
            rows.append({"mode": name, "c": c, "mean_batch": mean_batch, **result})
            errors = sum(int(result[k]) for k in ("connect", "read", "write", "status",
                                                  "timeout"))
            print(f"  {name:<12} c={c:<3} {result['rps']:7.2f} req/s  p50 "
                  f"{result['p50_ms']:8.1f} ms  p99 {result['p99_ms']:8.1f} ms  "
                  f"errors {errors}  mean batch {mean_batch:.2f}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return rows


def raw_ceiling(pack_dir: Path, batches: list[int], seconds: float) -> dict[int, float]:
    pack = load_pack(pack_dir, expected_kind="clap")
    runner = GraphRunner(create_session(pack.graph("audio", "fp32")[0], RuntimeConfig()))
    c = pack.constants
    return {b: measure(runner, b, c["frames"], c["n_mels"], seconds, 3)[0] for b in batches}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, default=Path("models/clap-tiny"),
                        help="a CLAP pack folder (the tiny one is exported when missing)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--clip", type=Path, default=None, help="audio file to post")
    args = parser.parse_args(argv)

    pack = ensure_pack(args.pack.resolve(), "tiny")
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = Path(tmp)
        (models_dir / "clap").symlink_to(pack, target_is_directory=True)
        body = models_dir / "body.bin"
        body.write_bytes(multipart_body(*clip_bytes(4.0, args.clip)))
        print(f"raw ceiling (ORT alone) on {pack} ...", flush=True)
        raw = raw_ceiling(pack, sorted({1, args.max_batch}), max(args.seconds / 2, 2.0))
        for b, rate in raw.items():
            print(f"  batch {b}: {rate:.2f} items/s", flush=True)
        rows = bench_mode("batching", models_dir, body, args, args.max_batch)
        rows += bench_mode("no batching", models_dir, body, args, 1)

    print(f"\n| mode | concurrency | req/s | P50 ms | P99 ms | errors | mean batch | "
          f"vs raw B={args.max_batch} | vs raw B=1 | batching / no batching |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    off = {r["c"]: r["rps"] for r in rows if r["mode"] == "no batching"}
    for r in rows:
        errors = sum(int(r[k]) for k in ("connect", "read", "write", "status", "timeout"))
        rps = float(r["rps"])
        gain = f"{rps / float(off[r['c']]):.2f}x" if r["mode"] == "batching" else ""
        print(f"| {r['mode']} | {r['c']} | {rps:.2f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{errors} | {float(r['mean_batch']):.2f} | {rps / raw[args.max_batch]:.2f} | "
              f"{rps / raw[1]:.2f} | {gain} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
