"""Servers under test as separate processes: audioserve (`python -m service`) or a peer.

The bench never imports the app in its own process: the server gets its own interpreter,
its own cores' worth of threads and its own memory figures (VmRSS / VmHWM from /proc,
summed over the process tree so multi-process peers such as Ray Serve are counted whole).
Only 127.0.0.1 is ever used.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, b""


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            kids.append(int(entry.name))
    return kids


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(_children(p))
    return tree


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


_TICKS = os.sysconf("SC_CLK_TCK")


def role(pid: int) -> str:
    """What a process of the tree is: Ray names its workers `ray::<actor>` (the Serve proxy,
    a replica `ray::ServeReplica:<app>:<deployment>`); others by their program."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    first = argv[0].decode(errors="replace")
    if first.startswith("ray::"):  # the title names the method running, if any: dropped
        name = first.split()[0].removeprefix("ray::").split(".")[0]
        return name.split(":")[-1] if name.startswith("ServeReplica:") else name
    program = Path(first).name
    if program.startswith("python"):
        script = next((a.decode() for a in argv[1:] if a and not a.startswith(b"-")), "")
        return Path(script).stem or program
    return program


def cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """User + system CPU seconds so far, and the role, of every process in the tree."""
    out: dict[int, tuple[str, float]] = {}
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[p] = (role(p), (int(fields[11]) + int(fields[12])) / _TICKS)  # utime, stime
    return out


def cpu_used_by_role(before: dict[int, tuple[str, float]],
                     after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds used between two `cpu_seconds` snapshots, summed by role (per process,
    so a process whose title changed in between is still counted only for the interval)."""
    used: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        delta = seconds - before.get(pid, (name, 0.0))[1]
        used[name] = used.get(name, 0.0) + delta
    return used


def memory_mb(pid: int, key: str = "VmRSS") -> float:
    """VmRSS (now) or VmHWM (peak) in MB, summed over the process and its descendants."""
    return sum(_status_kb(p, key) for p in process_tree(pid)) / 1024.0


@dataclass
class ServerProcess:
    """One server: started, polled until ready, measured, stopped (whole process group)."""

    name: str
    command: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = REPO
    ready_path: str = "/readyz"
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, ready_timeout_s: float = 300.0) -> ServerProcess:
        env = {**os.environ, **self.env}
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before "
                                   f"ready; log: {self.log_path}\n{self.log_tail()}")
            if http_get(self.url + self.ready_path, timeout=2.0)[0] == 200:
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {ready_timeout_s:.0f} s; "
                           f"log: {self.log_path}\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def rss_mb(self) -> float:
        return memory_mb(self.pid, "VmRSS")

    def peak_rss_mb(self) -> float:
        return memory_mb(self.pid, "VmHWM")

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def cpu_seconds(self) -> dict[int, tuple[str, float]]:
        return cpu_seconds(self.pid)

    def metrics_text(self) -> str:
        status, body = http_get(self.url + "/metrics")
        return body.decode() if status == 200 else ""

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGINT to the server itself (uvicorn drains, Ray's driver shuts its cluster down),
        then SIGKILL whatever of its process tree is left, stragglers in other sessions too."""
        if self.proc is None or self.proc.poll() is not None:
            return
        tree = process_tree(self.proc.pid)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        time.sleep(0.5)
        for pid in tree[1:]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def with_pythonpath(root: Path) -> str:
    """`root` first, then whatever PYTHONPATH already holds (the GPU machine's installed
    wheels live there, outside the interpreter's site-packages)."""
    return os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])


def audioserve(name: str, models_dir: Path, settings: dict[str, str], *,
               log_dir: Path, service_root: Path = REPO, python: str = sys.executable,
               port: int | None = None) -> ServerProcess:
    """`python -m service` with AUDIOSERVE_* settings (keys given without the prefix)."""
    port = port or free_port()
    env = {f"AUDIOSERVE_{k.upper()}": str(v) for k, v in settings.items()}
    env.update(AUDIOSERVE_MODELS_DIR=str(models_dir.resolve()), AUDIOSERVE_HOST=HOST,
               AUDIOSERVE_PORT=str(port), AUDIOSERVE_LOG_LEVEL="warning",
               PYTHONPATH=with_pythonpath(service_root))
    log_dir.mkdir(parents=True, exist_ok=True)
    return ServerProcess(name, [python, "-m", "service"], port, env, cwd=service_root,
                         log_path=log_dir / f"{name}.log")
