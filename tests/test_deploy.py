"""The deployment files stay valid: docker-compose.yml parses and reserves a GPU."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clap_fixtures import clap_models_dir  # noqa: F401
from tests.conftest import HANG_S
from tests.tools import require_module, require_tool

ROOT = Path(__file__).resolve().parents[1]


def _compose_command() -> list[str]:
    """`docker compose` (the plugin) or `docker-compose`, or a skip (a failure under CI,
    which installs docker-compose: tests/tools.py)."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return [docker, "compose"]
    return [require_tool("docker-compose", "apt-get install docker-compose, or Docker's "
                         "compose plugin")]


def test_compose_file_validates() -> None:
    command = _compose_command()
    result = subprocess.run(
        [*command, "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rendered = result.stdout
    assert "capabilities:" in rendered and "gpu" in rendered
    assert "/readyz" in rendered
    assert "/models" in rendered


def test_dockerfile_installs_the_gpu_extra_and_checks_readiness() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'pip install ".[gpu,cluster]"' in dockerfile
    assert "/readyz" in dockerfile
    assert "nvidia/cuda" in dockerfile


# -- the documented Ray CLI path (docs/cluster.md, "Several nodes") on a real local Ray ----

def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[4])  # the field after ppid and pgrp


def _processes_of(session: int, root: Path) -> set[int]:
    """Every process of the Ray started in `session` (workers keep it; their titles do not
    name the temp dir) or naming `root` on its command line (its daemons)."""
    from tests.ray_cluster import processes_under

    found = set(processes_under(root))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _session_of(int(entry.name)) == session:
            found.add(int(entry.name))
    return found - {os.getpid()}


def _stop(head: subprocess.Popen[bytes], root: Path) -> None:
    """`ray start --block` takes its node down on SIGTERM (`serve run` its app); whatever
    is left of its session after that is killed. `ray stop` is never used: it stops every
    Ray on the machine."""
    session = head.pid  # start_new_session: the session id is the leader's pid
    head.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        head.wait(timeout=60)
    deadline = time.monotonic() + 30
    while (left := _processes_of(session, root)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL if time.monotonic() > deadline - 20 else signal.SIGTERM)
        time.sleep(0.5)
    if head.poll() is None:
        head.kill()
        head.wait()
    assert not _processes_of(session, root), "Ray processes left after the test"


@pytest.fixture
def ray_root() -> Iterator[Path]:
    """The test's own directory for everything Ray and HAProxy write, removed after it.
    Short, directly under /tmp (which may be empty): HAProxy's sockets go in
    `<dir>/haproxy/<56-character node id>/metrics.sock`, at most 97 bytes, so a pytest
    tmp_path (`/tmp/pytest-of-<user>/pytest-<n>/...`) is already too long."""
    root = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _serve_logs(root: Path) -> str:
    """The end of every Serve log of the Ray under `root`: why a deploy did not come up."""
    logs = sorted((root / "session_latest" / "logs" / "serve").glob("*.log"))
    return "\n".join(f"== {log.name}\n" + "\n".join(log.read_text().splitlines()[-15:])
                     for log in logs)


def _check_serving(api: str, root: Path) -> None:
    """Ready, the pack the environment names, and a real /classify through HAProxy."""
    import httpx

    from tests.clap_fixtures import make_clip, wav_bytes
    from tests.ray_cluster import wait_ready

    try:
        wait_ready(api)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_serve_logs(root)}") from None
    models = httpx.get(api + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["clap"]
    answer = httpx.post(api + "/classify", timeout=60, data={"labels": ["dog", "rain"]},
                        files={"file": ("a.wav", wav_bytes(make_clip(3.0, seed=1)))})
    assert answer.status_code == 200, answer.text
    assert {s["label"] for s in answer.json()["labels"]} == {"dog", "rain"}


def _app_listed(bin_dir: Path, url: str, env: dict[str, str], wait_s: float = 20.0) -> bool:
    """Whether `serve status` shows the audioserve app deploying or running within
    `wait_s` (not the one `serve run` left being deleted)."""
    yaml = require_module("yaml", "pyyaml")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        status = subprocess.run([bin_dir / "serve", "status", "-a", url], env=env,
                                capture_output=True, text=True, timeout=120).stdout
        apps = (yaml.safe_load(status) or {}).get("applications") or {}
        if apps.get("audioserve", {}).get("status") in ("DEPLOYING", "RUNNING"):
            return True
        time.sleep(1)
    return False


def _documented_env(base: dict[str, str]) -> dict[str, str]:
    """The environment after `eval "$(python -m service.cluster --print-env)"`, as a shell
    that follows docs/cluster.md has it."""
    shell = subprocess.run(
        ["bash", "-c", f'eval "$({sys.executable} -m service.cluster --print-env)" && env -0'],
        env=base, cwd=ROOT, capture_output=True, timeout=120, check=True)
    pairs = (item.split(b"=", 1) for item in shell.stdout.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode() for k, v in pairs}


def test_serve_run_and_deploy_of_the_shipped_config_on_a_ray_the_cli_started(
        ray_root: Path, clap_models_dir: Path) -> None:  # noqa: F811
    """docs/cluster.md's recipe, one node: a Ray token from an earlier local `ray.init()`
    (so `ray start` turns token auth on), `--print-env` in the shell, `ray start --head`
    with its dashboard, then `serve run` and `serve deploy` of deploy/serve.yaml (its port
    set by the documented `sed`); every Ray path under this test's own directory."""
    root = ray_root
    require_module("ray.serve", "the `cluster` extra: pip install -e '.[cluster]'")
    from service.cluster.runtime import free_port, haproxy_files_under

    bin_dir = Path(sys.executable).parent
    port, gcs, dashboard = free_port(), free_port(), free_port()
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("AUDIOSERVE_", "RAY_")) and k != "XDG_DATA_HOME"}
    base.update(HOME=str(root / "home"), RAY_TMPDIR=str(root), TMPDIR=str(root),
                PYTHONPATH=str(ROOT), PATH=f"{bin_dir}:{base.get('PATH', '')}",
                AUDIOSERVE_MODELS_DIR=str(clap_models_dir), AUDIOSERVE_PORT=str(port),
                AUDIOSERVE_WARMUP="false", AUDIOSERVE_INTRA_OP_THREADS="1",
                AUDIOSERVE_BATCH_WORKERS="1")
    (root / "home").mkdir()
    # what the first local ray.init() (`python -m service.cluster`) leaves: ~/.ray/auth_token
    subprocess.run([bin_dir / "ray", "get-auth-token", "--generate"], env=base,
                   capture_output=True, timeout=120, check=True)
    env = _documented_env(base)
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["AUDIOSERVE_PORT"] == str(port)
    assert env["AUDIOSERVE_VOICES_DIR"] == str(root / "home/.local/share/audioserve/voices")
    haproxy_files_under(env, root)  # one machine, maybe other Rays on it: its own ports
    config = root / "serve.yaml"
    subprocess.run(["bash", "-c", f'sed "s/port: 8000/port: $AUDIOSERVE_PORT/" '
                    f'{ROOT / "deploy/serve.yaml"} > {config}'], env=env, check=True)
    ports = {"--port": gcs, "--dashboard-port": dashboard,
             "--dashboard-agent-listen-port": free_port(),
             "--dashboard-agent-grpc-port": free_port(), "--runtime-env-agent-port": free_port(),
             "--ray-client-server-port": free_port(), "--metrics-export-port": free_port(),
             "--node-manager-port": free_port(), "--object-manager-port": free_port()}
    head = subprocess.Popen(
        [bin_dir / "ray", "start", "--head", "--block", "--num-cpus=2", f"--temp-dir={root}",
         "--dashboard-host=127.0.0.1", *(f"{k}={v}" for k, v in ports.items())],
        env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    run: subprocess.Popen[bytes] | None = None
    try:
        url, api = f"http://127.0.0.1:{dashboard}", f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:  # the dashboard answers once the head is up
            status = subprocess.run([bin_dir / "serve", "status", "-a", url], env=env,
                                    capture_output=True, text=True, timeout=120)
            if status.returncode == 0 or time.monotonic() > deadline or head.poll() is not None:
                break
            time.sleep(2)
        assert status.returncode == 0, status.stdout + status.stderr

        # `serve run`, in the foreground, onto this cluster; Ctrl-C takes the app down
        with (root / "serve-run.log").open("wb") as out:
            # Ctrl-C as a terminal sends it: SIGINT at its default, even where this test
            # runs as a background job (a shell without job control starts those with
            # SIGINT ignored, and children inherit that: `serve run` would never stop)
            run = subprocess.Popen([bin_dir / "serve", "run", str(config)],
                                   env={**env, "RAY_ADDRESS": f"127.0.0.1:{gcs}"}, cwd=ROOT,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_default_sigint)
        _check_serving(api, root)
        run.send_signal(signal.SIGINT)
        try:  # Serve drains the app's replicas first (graceful shutdown, HAProxy's drain)
            run.wait(timeout=5 * HANG_S)
        except subprocess.TimeoutExpired:
            log = (root / "serve-run.log").read_text(errors="replace").splitlines()[-30:]
            raise AssertionError("`serve run` still running 5 min after Ctrl-C\n"
                                 + "\n".join(log) + "\n" + _serve_logs(root)) from None
        run = None

        # `serve deploy`: sent to the dashboard, and back. Serve's controller may still be
        # going down after `serve run`'s Ctrl-C (its shutdown kills the controller actor,
        # which dies a moment after `serve run` exits): it then ignores the config, or the
        # dashboard answers 500 with the controller's ActorDiedError, so the deploy is sent
        # again until the app is there (what a user at the prompt would do)
        deadline = time.monotonic() + HANG_S
        while True:
            deploy = subprocess.run([bin_dir / "serve", "deploy", str(config), "-a", url],
                                    env=env, cwd=ROOT, capture_output=True, text=True,
                                    timeout=120)
            said = deploy.stdout + deploy.stderr
            dying = "SERVE_CONTROLLER_ACTOR" in said and "ActorDiedError" in said
            assert deploy.returncode == 0 or (dying and time.monotonic() < deadline), said
            if (deploy.returncode == 0 and _app_listed(bin_dir, url, env)) \
                    or time.monotonic() > deadline:
                break
            time.sleep(1)
        _check_serving(api, root)
        # what docs/cluster.md warns of: without RAY_AUTH_MODE the CLI sends no token
        bare = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
        refused = subprocess.run([bin_dir / "serve", "deploy", str(config), "-a", url],
                                 env=bare, cwd=ROOT, capture_output=True, text=True,
                                 timeout=120)
        assert refused.returncode != 0 and "token" in (refused.stdout + refused.stderr).lower()
        # a port the app is told that is not Serve's: the deploy fails, saying where
        wrong = root / "wrong-port.yaml"
        wrong.write_text(config.read_text().replace("    args:\n", "    args:\n      port: 1\n"))
        subprocess.run([bin_dir / "serve", "deploy", str(wrong), "-a", url], env=env,
                       cwd=ROOT, capture_output=True, timeout=120, check=True)
        status_text, deadline = "", time.monotonic() + 120
        while "AUDIOSERVE_PORT=1," not in status_text and time.monotonic() < deadline:
            status_text = subprocess.run([bin_dir / "serve", "status", "-a", url], env=env,
                                         capture_output=True, text=True, timeout=120).stdout
            time.sleep(1)
        assert "DEPLOY_FAILED" in status_text and "http_options.port" in status_text, \
            status_text
    finally:
        if run is not None:
            _stop(run, root)
        _stop(head, root)


def test_compose_keeps_saved_voices_in_a_volume() -> None:
    yaml = require_module("yaml", "pyyaml")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["audioserve"]
    folder = service["environment"]["AUDIOSERVE_VOICES_DIR"]
    assert f"voices:{folder}" in service["volumes"] and "voices" in compose["volumes"]
    assert "AUDIOSERVE_VOICES_DIR=/voices" in (ROOT / "Dockerfile").read_text()


def test_saved_voices_default_outside_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import Settings

    monkeypatch.delenv("AUDIOSERVE_VOICES_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert Settings(_env_file=None).voices_dir == tmp_path / "data" / "audioserve" / "voices"
    monkeypatch.delenv("XDG_DATA_HOME")
    voices = Settings(_env_file=None).voices_dir
    assert voices.is_absolute() and voices == Path.home() / ".local/share/audioserve/voices"


def test_compose_waits_for_the_shutdown_and_the_build_context_is_small() -> None:
    """Docker's stop gives the server its whole shutdown timeout (its default 10 s SIGKILLed
    requests in flight, exit 137); the build context leaves out the venv and the packs."""
    yaml = require_module("yaml", "pyyaml")
    from service.settings import Settings

    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["audioserve"]
    grace = service["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > Settings(_env_file=None).shutdown_timeout_s
    assert all(port.startswith("127.0.0.1:") for port in service["ports"])  # no key set
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "models", ".git"} <= set(ignored)
