"""The README as a user reads it: every setting is in its configuration table, and the
base64 JSON example works as written, past the size where a command-line argument fails."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from service.cluster.config import ClusterSettings, DeploymentSettings
from service.settings import Settings
from tests.clap_fixtures import clap_models_dir, make_clip, wav_bytes  # noqa: F401
from tests.tts_server import serve_app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _configuration_names() -> set[str]:
    """Every backticked name in the first column of the configuration tables."""
    section = README[README.index("## Configuration"):]
    section = section[:section.index("\n## ", 1)]
    names: set[str] = set()
    for row in re.findall(r"^\| ([^|]+) \|", section, flags=re.M):
        names.update(re.findall(r"`([A-Z0-9_<>]+)`", row))
    return names


def test_every_setting_is_in_the_configuration_table() -> None:
    names = _configuration_names()
    missing = [f"AUDIOSERVE_{f.upper()}" for f in Settings.model_fields
               if f.upper() not in names]
    for field, info in ClusterSettings.model_fields.items():
        if info.annotation is DeploymentSettings:
            assert "CLUSTER_<D>_REPLICAS" in names  # <D> names the deployments
            continue
        if f"CLUSTER_{field.upper()}" not in names:
            missing.append(f"AUDIOSERVE_CLUSTER_{field.upper()}")
    for field in DeploymentSettings.model_fields:
        if not {f"CLUSTER_<D>_{field.upper()}", f"_{field.upper()}"} & names:
            missing.append(f"AUDIOSERVE_CLUSTER_<D>_{field.upper()}")
    assert not missing, f"settings missing from README's configuration table: {missing}"


def _readme_command(marker: str) -> str:
    """The shell command that follows `marker` in README's usage block (continuation
    lines joined as the shell joins them)."""
    block = README[README.index(marker):]
    lines = []
    for line in block.splitlines()[1:]:
        if line.startswith("#") or not line.strip():
            if lines:
                break
            continue
        lines.append(line)
        if not line.endswith("\\"):
            break
    return "\n".join(lines)


@pytest.mark.skipif(not all(shutil.which(t) for t in ("base64", "jq", "curl")),
                    reason="the README's example uses base64, jq and curl")
def test_the_base64_json_example_works_for_a_large_file(
        tmp_path: Path, clap_models_dir: Path) -> None:  # noqa: F811
    """"$(base64 f)" as an argument fails past ~96 KB ("Argument list too long"); the
    README's pipe sends any size. Its exact command, against a live server."""
    command = _readme_command("# JSON with base64 audio")
    assert "localhost:8000" in command and "dog.wav" in command
    clip = wav_bytes(make_clip(4.0, seed=5))  # float WAV at 48 kHz: 768 KB, 1 MB in base64
    assert len(clip) > 100_000
    (tmp_path / "dog.wav").write_bytes(clip)
    with serve_app(models_dir=clap_models_dir, warmup=False) as server:
        run = subprocess.run(["bash", "-c", command.replace("localhost:8000", server.url)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert sorted(s["label"] for s in answer["labels"]) == ["cat", "dog"], answer
