"""The single-process service never imports ray: only `service.cluster` does.

Checked in a fresh interpreter that builds the app and serves a request through its
lifespan with a real pack loaded, so lazily imported route and pipeline modules count.
(That no module outside service/cluster/ names ray is read from the source in
tests/test_layers.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.clap_fixtures import clap_models_dir  # noqa: F401

PROBE = """
import sys
from fastapi.testclient import TestClient
import service.__main__
from service.app import create_app
from service.settings import Settings

settings = Settings(_env_file=None, models_dir=sys.argv[1], models="clap", warmup=False,
                    load_in_background=False)
with TestClient(create_app(settings)) as client:
    assert client.get("/readyz").status_code == 200
    assert client.post("/embed/text", json={"input": ["a dog"]}).status_code == 200
    assert client.get("/v1/models").status_code == 200
    assert client.get("/metrics").status_code == 200
ray = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
print("RAY_MODULES", ray)
assert not ray, ray
"""


def test_single_process_service_imports_no_ray(clap_models_dir: Path) -> None:  # noqa: F811
    done = subprocess.run([sys.executable, "-c", PROBE, str(clap_models_dir)],
                          capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "RAY_MODULES []" in done.stdout
