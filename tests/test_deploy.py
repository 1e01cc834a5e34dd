"""The deployment files stay valid: docker-compose.yml parses and reserves a GPU."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.tools import require_tool

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
