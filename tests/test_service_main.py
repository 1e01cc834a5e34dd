"""`python -m service` as an operator runs it, in a real process: settings errors, exit
statuses, readiness over a real socket and the start-up log."""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import onnxruntime as ort
import pytest

pytest_plugins = ("tests.clap_fixtures",)

ROOT = Path(__file__).resolve().parents[1]
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")
"""service/logs.py's FORMAT: every line the server prints, uvicorn's included."""
STARTUP_S = 120.0


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without its AUDIOSERVE_* variables, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("AUDIOSERVE_")}
    return {**env, "PYTHONPATH": str(ROOT), **variables}


OpenFiles = tuple[int, int]
"""An open-file limit to start a command under: (soft, hard), as `ulimit -Sn` / `-Hn`."""
_LIMITED = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (%d, %d)); "
            "os.execv(sys.executable, [sys.executable, '-m', *sys.argv[1:]])")


def python_m(module: str, open_files: OpenFiles | None = None) -> list[str]:
    """`python -m module`, under `open_files` if given (set, then exec'd: a preexec_fn is
    not safe in a process with threads, and the suite's servers are threads)."""
    if open_files is None:
        return [sys.executable, "-m", module]
    return [sys.executable, "-c", _LIMITED % open_files, module]


def run_service(args: list[str], cwd: Path, open_files: OpenFiles | None = None,
                **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*python_m("service", open_files), *args], cwd=cwd,
                          env=environment(**variables), capture_output=True, text=True,
                          timeout=STARTUP_S)


class Server:
    """A started `python -m service`; its stderr lines read as they come."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str) -> re.Match[str]:
        """The first line matching `pattern` (an AssertionError if the process ends or
        stays silent for STARTUP_S first)."""
        while True:
            line = self._queue.get(timeout=STARTUP_S)
            if line is None:
                raise AssertionError(f"ended without {pattern!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match

    def rest(self) -> list[str]:
        while (line := self._queue.get(timeout=STARTUP_S)) is not None:
            self.lines.append(line)
        return self.lines


@contextmanager
def started(args: list[str], cwd: Path, open_files: OpenFiles | None = None,
            **variables: str) -> Iterator[Server]:
    process = subprocess.Popen([*python_m("service", open_files), *args], cwd=cwd,
                               env=environment(**variables), stderr=subprocess.PIPE, text=True)
    try:
        yield Server(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=STARTUP_S)


def test_bad_settings_are_one_line_each_naming_the_variable(tmp_path: Path) -> None:
    done = run_service(["--port", "eighty"], tmp_path, AUDIOSERVE_MAX_UPLOAD_BYTES="12",
                       AUDIOSERVE_LOG_LEVEL="loud", AUDIOSERVE_MAX_UPLOAD="1000",
                       AUDIOSERVE_MODELS="clap,tts")
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 5, done.stderr  # one per problem, no traceback
    text = done.stderr
    assert "AUDIOSERVE_MAX_UPLOAD_BYTES='12': input should be greater than or equal to 1024" in text
    assert "AUDIOSERVE_LOG_LEVEL='loud': input should be 'critical', 'error'" in text
    assert ("AUDIOSERVE_MAX_UPLOAD is not a setting; did you mean AUDIOSERVE_MAX_UPLOAD_BYTES?"
            in text)
    assert "AUDIOSERVE_MODELS='clap,tts': tts is not a model; allowed: auto, none" in text
    assert "--port='eighty': input should be a valid integer" in text
    assert "Traceback" not in text and list(tmp_path.iterdir()) == []


def test_values_with_no_meaning_are_refused_too(tmp_path: Path) -> None:
    """Out of range for what they are (a port, an interface, a count), not a number, or a
    limit that breaks the server (every upload a 413): each refused, not started on."""
    done = run_service(["--port", "70000"], tmp_path, AUDIOSERVE_HOST="",
                       AUDIOSERVE_INTRA_OP_THREADS="-2", AUDIOSERVE_MAX_WAIT_MS="nan",
                       AUDIOSERVE_REQUEST_TIMEOUT_S="inf",
                       AUDIOSERVE_MAX_BODY_BYTES_IN_FLIGHT=str(2**20))
    assert done.returncode == 2
    text = done.stderr
    assert len(text.splitlines()) == 6, text
    assert "--port='70000': input should be less than or equal to 65535" in text
    assert "AUDIOSERVE_HOST='': string should have at least 1 character" in text
    assert "AUDIOSERVE_INTRA_OP_THREADS='-2': input should be greater than or equal to 0" in text
    assert "AUDIOSERVE_MAX_WAIT_MS='nan': input should be a finite number" in text
    assert "AUDIOSERVE_REQUEST_TIMEOUT_S='inf': input should be a finite number" in text
    assert ("AUDIOSERVE_MAX_BODY_BYTES_IN_FLIGHT='1048576': below the largest body a route "
            "takes (35018069 bytes" in text)


def test_a_port_in_use_exits_1_and_the_load_stops_with_it(tmp_path: Path,
                                                           clap_models_dir: Path) -> None:
    """uvicorn's one line names the cause; the packs loading beside it say nothing after
    the shutdown (a load finished after it logged "loaded clap")."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_service(["--port", str(port), "--models-dir", str(clap_models_dir)],
                           tmp_path)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert any("address already in use" in line for line in lines), done.stderr
    shutdown = next(i for i, line in enumerate(lines) if "Application shutdown" in line)
    assert not [line for line in lines[shutdown:] if "loaded" in line], done.stderr
    assert "Traceback" not in done.stderr


def test_a_setting_in_the_env_file_is_checked_alike(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("AUDIOSERVE_MAX_QUEU=4\n")
    done = run_service([], tmp_path)
    assert done.returncode == 2
    assert "AUDIOSERVE_MAX_QUEU is not a setting; did you mean AUDIOSERVE_MAX_QUEUE?" in done.stderr


def test_no_pack_found_exits_naming_the_folder(tmp_path: Path) -> None:
    done = run_service(["--models-dir", "mistyped"], tmp_path)
    assert done.returncode == 1
    assert f"model packs in {tmp_path / 'mistyped'}: found none" in done.stderr
    assert re.search(r"CRITICAL audioserve: cannot serve: no model packs: .*mistyped "
                     r"\(AUDIOSERVE_MODELS_DIR\) does not exist", done.stderr)
    assert "Traceback" not in done.stderr


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this onnxruntime has CUDA")
def test_cuda_asked_for_without_it_exits_naming_the_cause(tmp_path: Path,
                                                          clap_models_dir: Path) -> None:
    done = run_service(["--models-dir", str(clap_models_dir)], tmp_path,
                       AUDIOSERVE_PROVIDER="cuda")
    assert done.returncode == 1
    (line,) = [x for x in done.stderr.splitlines() if "CRITICAL" in x]
    assert "cannot serve: AUDIOSERVE_PROVIDER=cuda but onnxruntime offers only" in line
    assert "Traceback" not in done.stderr


def test_a_pack_that_cannot_load_stops_the_server(tmp_path: Path, clap_models_dir: Path) -> None:
    """The manifest is fine, the graph is not: found while loading in the background, and
    the process exits 1 naming the file (not a live server that is never ready)."""
    pack = tmp_path / "models" / "clap"
    pack.mkdir(parents=True)
    for source in (clap_models_dir / "clap").iterdir():
        (pack / source.name).symlink_to(source)
    manifest = json.loads((pack / "manifest.json").read_text())
    graph = pack / manifest["graphs"]["audio"]["fp32"]["file"]  # always opened
    graph.unlink()
    graph.write_bytes(b"not an onnx graph")
    with started(["--port", "0", "--models", "clap"], tmp_path) as server:
        server.wait_for(r"loading model packs failed: cannot load ONNX graph .*" + graph.name)
        server.wait_for(r"stopping: the server cannot serve what it was asked to")
        assert server.process.wait(timeout=STARTUP_S) == 1
        assert "Traceback" not in "\n".join(server.rest())


def test_startup_log_readiness_and_a_clean_stop(tmp_path: Path, clap_models_dir: Path) -> None:
    """Flags over variables (the variable's folder does not exist); one format for every
    line; the provider's fall-back once; where the page and the docs are; which packs."""
    with started(["--port", "0", "--models-dir", str(clap_models_dir)], tmp_path,
                 AUDIOSERVE_MODELS_DIR=str(tmp_path / "nowhere"), AUDIOSERVE_WARMUP="false",
                 AUDIOSERVE_PORT="1") as server:
        url = server.wait_for(r"audioserve on (http://127\.0\.0\.1:\d+): web page \S+/ , "
                              r"API docs \S+/docs").group(1)
        server.wait_for(r"ready: clap \(demo, fp32, cpu\)")
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "models": ["clap"], "expected": ["clap"]}
        assert httpx.get(url + "/docs").status_code == 200
        metrics = httpx.get(url + "/metrics").text  # every queue's series before any batch
        for queue in ("clap_audio", "clap_text"):
            assert f'audioserve_queue_depth{{queue="{queue}"}} 0.0' in metrics
            assert f'audioserve_batch_size_count{{queue="{queue}"}} 0.0' in metrics
            limit = re.search(rf'audioserve_batch_size_limit{{queue="{queue}"}} (\S+)', metrics)
            assert limit and float(limit.group(1)) >= 1, metrics
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=STARTUP_S) == 0  # a stop asked for
        lines = server.rest()
    assert "Finished server process" in lines[-1]  # no KeyboardInterrupt traceback after it
    assert all(LOG_LINE.match(line) for line in lines), "\n".join(lines)
    fallbacks = sum("CUDAExecutionProvider not available" in line for line in lines)
    assert fallbacks == (0 if "CUDAExecutionProvider" in ort.get_available_providers() else 1)
    assert any(f"model packs in {clap_models_dir}: found clap; not found: emotion2vec, chattts"
               in line for line in lines)
    assert any("loaded clap from" in line and "DEMO pack" in line for line in lines)


def test_a_stop_waits_for_requests_in_flight_only_as_long_as_the_setting(
        tmp_path: Path) -> None:
    """SIGTERM with a request whose body is still coming (the body timeouts are 10
    minutes): the process exits 0 once `SHUTDOWN_TIMEOUT_S` has passed, not when the
    client is done (uvicorn waited as long as it took), and the request cut gets a 503
    to retry, not uvicorn's plain-text 500 and a traceback in the log."""
    with started(["--port", "0", "--models", "none"], tmp_path,
                 AUDIOSERVE_SHUTDOWN_TIMEOUT_S="1", AUDIOSERVE_BODY_TIMEOUT_S="600",
                 AUDIOSERVE_BODY_IDLE_TIMEOUT_S="600") as server:
        host, port = server.wait_for(r"audioserve on http://([\d.]+):(\d+)").groups()
        with socket.create_connection((host, int(port)), timeout=STARTUP_S) as sock:
            sock.sendall(b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\nContent-Length: 1000\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")  # in the app
            sock.sendall(b'{"input": "')  # and the rest of it never comes
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=60) == 0
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        lines = server.rest()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head.lower(), answer
    assert json.loads(body)["error"]["code"] == "shutting_down"
    assert any("Waiting for connections to close" in line for line in lines), lines
    assert any("POST /embed/text cut: the server stopped" in line for line in lines), lines
    assert any('"POST /embed/text" 503' in line for line in lines), lines  # the access log
    assert not any("Traceback" in line for line in lines), lines


OPEN_FILES_REFUSED = re.compile(
    r"python -m service: AUDIOSERVE_MAX_CONNECTIONS=1024: the server needs (\d+) open files "
    r"\(1024 for the connections, \d+ open now, 128 spare\), over the hard open-file limit "
    r"of 1024 \(soft 1024\); raise `ulimit -n` \(its hard limit\) to \1 or more, or lower "
    r"AUDIOSERVE_MAX_CONNECTIONS to (\d+) or less \(docs/hardening.md, \"Open files\"\)")


def test_an_open_file_limit_that_cannot_hold_the_connection_cap_is_a_bad_setting(
        tmp_path: Path) -> None:
    """`ulimit -n 1024` and the default cap of 1,024 connections: the descriptors ran out
    before the cap refused anyone (accept() failed: of 1,100 sockets 95 were dropped
    unanswered, none got the cap's 503). Refused at start-up in one line naming both
    numbers and both ways out; the smaller cap it names then starts under that limit."""
    done = run_service(["--port", "0", "--models", "none"], tmp_path, open_files=(1024, 1024))
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    refused = OPEN_FILES_REFUSED.fullmatch(line)
    assert refused, line
    fits = refused.group(2)
    with started(["--port", "0", "--models", "none"], tmp_path, open_files=(1024, 1024),
                 AUDIOSERVE_MAX_CONNECTIONS=fits) as server:
        server.wait_for(r"audioserve on http://")
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=STARTUP_S) == 0
        assert not any("open-file limit" in line for line in server.rest())  # it fits


def test_a_low_soft_open_file_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    """Soft 256, hard 4,096: raised to 4,096 and said so, and used: more connections open
    at once than the limit it started with, every one answered."""
    with started(["--port", "0", "--models", "none"], tmp_path, open_files=(256, 4096)) as server:
        server.wait_for(r"INFO audioserve.server: open-file limit raised from 256 to 4096 "
                        r"\(the hard limit is 4096\): the server needs \d+ for "
                        r"AUDIOSERVE_MAX_CONNECTIONS=1024 \(1024 for the connections, ")
        host, port = server.wait_for(r"audioserve on http://([\d.]+):(\d+)").groups()
        limits = Path(f"/proc/{server.process.pid}/limits").read_text()
        assert re.search(r"Max open files\s+4096\s+4096\s", limits), limits
        sockets = [socket.create_connection((host, int(port)), timeout=STARTUP_S)
                   for _ in range(400)]
        try:
            for sock in sockets:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answers = [sock.recv(65536) for sock in sockets]
        finally:
            for sock in sockets:
                sock.close()
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=STARTUP_S) == 0
        assert "Traceback" not in "\n".join(server.rest())


def run_cluster(args: list[str], cwd: Path, open_files: OpenFiles | None = None,
                **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*python_m("service.cluster", open_files), *args], cwd=cwd,
                          env=environment(**variables), capture_output=True, text=True,
                          timeout=STARTUP_S)


def test_the_cluster_checks_its_settings_the_same_way(tmp_path: Path) -> None:
    """`AUDIOSERVE_*` and `AUDIOSERVE_CLUSTER_*` alike: a line each, exit 2; `--print-env`
    carries the flags' settings."""
    done = run_cluster(["--print-env"], tmp_path, AUDIOSERVE_CLUSTER_CLAP_REPLICA="2",
                       AUDIOSERVE_CLUSTER_CHATTTS_REPLICAS="-1", AUDIOSERVE_MAX_QUEU="3")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "python -m service.cluster: AUDIOSERVE_CLUSTER_CLAP_REPLICA is not a setting; did you "
        "mean AUDIOSERVE_CLUSTER_CLAP_REPLICAS? (settings: README, Configuration)",
        "python -m service.cluster: AUDIOSERVE_MAX_QUEU is not a setting; did you mean "
        "AUDIOSERVE_MAX_QUEUE? (settings: README, Configuration)",
        "python -m service.cluster: AUDIOSERVE_CLUSTER_CHATTTS_REPLICAS='-1': input should be "
        "greater than or equal to 0 or 'auto'"]
    no_port = run_cluster(["--port", "0"], tmp_path)
    assert no_port.returncode == 2
    assert "--port=0: the cluster's HTTP ingress (HAProxy) needs a fixed port" in no_port.stderr
    printed = run_cluster(["--print-env"], tmp_path, AUDIOSERVE_MAX_CONNECTIONS="77")
    assert printed.returncode == 0, printed.stderr
    assert "export RAY_SERVE_HAPROXY_MAXCONN=77" in printed.stdout.splitlines()


def test_the_cluster_without_packs_exits_before_starting_ray(tmp_path: Path) -> None:
    done = run_cluster(["--models-dir", "mistyped"], tmp_path)
    assert done.returncode == 1
    assert "cannot serve: no model packs: " in done.stderr
    assert "starting Ray" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this onnxruntime has CUDA")
def test_a_local_cluster_without_the_provider_exits_before_starting_ray(
        tmp_path: Path, clap_models_dir: Path) -> None:
    done = run_cluster(["--models-dir", str(clap_models_dir)], tmp_path,
                       AUDIOSERVE_PROVIDER="cuda")
    assert done.returncode == 1
    assert "cannot serve: AUDIOSERVE_PROVIDER=cuda but onnxruntime offers only" in done.stderr
    assert "starting Ray" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="no Ray here")
def test_a_local_cluster_checks_haproxys_open_files_before_starting_ray(tmp_path: Path) -> None:
    """HAProxy holds two sockets and half a pipe per connection and inherits this process's
    hard limit; past it HAProxy only logs an alert in Ray's log folder and runs short."""
    done = run_cluster(["--address", "local", "--models", "none"], tmp_path,
                       open_files=(1024, 1024))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "python -m service.cluster: AUDIOSERVE_MAX_CONNECTIONS=1024: HAProxy needs 2688 open "
        "files (2560 for the connections at 2.5 each, 128 spare), over the hard open-file "
        "limit of 1024 (soft 1024); raise `ulimit -n` (its hard limit) to 2688 or more, or "
        "lower AUDIOSERVE_MAX_CONNECTIONS to 358 or less (docs/hardening.md, \"Open files\")"]


_READ_VARIABLE = re.compile(
    r"""(?:environ\.get\(|getenv\(|environ\[|_ENV\s*=\s*)["'](AUDIOSERVE_[A-Z0-9_]+)["']""")


def test_the_projects_own_variables_do_not_stop_a_server() -> None:
    """A variable the test suite or a benchmark reads (and an operator may have exported
    for them) is not refused as a misspelt setting: AUDIOSERVE_TEST_SCREENSHOTS was."""
    from service.cli import unknown_variables
    from service.settings import Settings
    read = {name for folder in ("tests", "bench", "service")
            for path in (ROOT / folder).rglob("*.py")
            for name in _READ_VARIABLE.findall(path.read_text())}
    assert {"AUDIOSERVE_SLOW_TESTS", "AUDIOSERVE_TEST_SCREENSHOTS"} <= read  # the scan works
    assert unknown_variables([Settings], dict.fromkeys(read, "1")) == []
