"""The GPU check, known to work before anyone spends GPU time on it: its wheel packing
round trip, and the whole check end to end on CPU with tiny packs (the CI smoke run)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.gpu_check import wheels

REPO = Path(__file__).resolve().parents[1]


def _wheel(folder: Path, name: str, size: int, seed: int) -> Path:
    path = folder / name
    path.write_bytes(np.random.default_rng(seed).bytes(size))
    return path


def test_wheels_travel_in_carry_sized_folders_and_come_back_whole(tmp_path: Path) -> None:
    download = tmp_path / "download"
    download.mkdir()
    big = _wheel(download, "onnxruntime_gpu-1.0-cp312-cp312-manylinux_2_28_x86_64.whl",
                 2_500_000, 0)
    for i, size in enumerate([700_000, 300_000, 90_000]):
        _wheel(download, f"dep{i}-1.0-py3-none-any.whl", size, i + 1)
    plan = wheels.pack(download, tmp_path / "gpu", folder_bytes=1_000_000)
    folders = sorted((tmp_path / "gpu").glob("part*"))
    assert [f.name for f in folders] == plan["folders"] and len(folders) == 4
    for folder in folders:  # every folder fits one carry
        assert sum(f.stat().st_size for f in folder.iterdir() if f.suffix != ".json") \
            <= 1_000_000
    store = tmp_path / "store"
    for folder in folders[:-1]:  # one call each; the last one is missing
        carried = tmp_path / f"call-{folder.name}"
        shutil.copytree(folder, carried / folder.name)
        wheels.stash(carried, store)
    with pytest.raises(SystemExit, match=folders[-1].name):
        wheels.join(store)
    wheels.stash(tmp_path / "gpu", store)
    joined = wheels.join(store)
    assert hashlib.sha256(joined.read_bytes()).hexdigest() == \
        hashlib.sha256(big.read_bytes()).hexdigest()
    assert {p.name for p in store.glob("*.whl")} == {p.name for p in download.iterdir()}


def test_a_corrupt_slice_is_refused(tmp_path: Path) -> None:
    download = tmp_path / "download"
    download.mkdir()
    _wheel(download, "onnxruntime_gpu-1.0-py3-none-any.whl", 300_000, 0)
    wheels.pack(download, tmp_path / "gpu", folder_bytes=200_000)
    store = tmp_path / "store"
    wheels.stash(tmp_path / "gpu", store)
    part = next(store.glob("*.part02"))
    part.write_bytes(part.read_bytes()[:-1] + b"\0")
    with pytest.raises(SystemExit, match="sha256"):
        wheels.join(store)


BUDGET_S = 3600
"""The run's budget: steps left when it runs out are skipped, which this test counts as a
failure, so it is far above what the quick run takes (a few minutes here): a slow machine
must not skip steps. Each step keeps its own time limit (2-5 min), its hang guard."""


def test_the_gpu_check_runs_end_to_end_on_cpu(tmp_path: Path) -> None:
    """Every step of `python -m bench.gpu_check` with tiny packs and the shortest
    benchmark settings, the Python closed-loop client standing in for wrk (as on the GPU
    machine): the parity rows pass and every step completes."""
    from bench.server import with_pythonpath

    env = {**os.environ, "AUDIOSERVE_BENCH_CLIENT": "python",
           "PYTHONPATH": with_pythonpath(REPO)}
    env.pop("OUT", None)
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--provider", "cpu", "--tiny", "--quick",
         "--no-pytest", "--budget-s", str(BUDGET_S), "--out", str(tmp_path / "out"),
         "--work", str(tmp_path / "work")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=BUDGET_S + 300,
        check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    (run,) = list((tmp_path / "out").iterdir())
    results = json.loads((run / "results.json").read_text())
    steps = {s["name"]: s["status"] for s in results["steps"]}
    from bench.gpu_check.__main__ import SPEECH_DIRS

    clips = any(any(d.glob("*.flac")) for d in SPEECH_DIRS)  # ../shared's, where present
    live = "ok" if clips else "skipped"  # it needs real speech; said in the report then
    assert all(status == (live if name.startswith("live analysis") else "ok")
               for name, status in steps.items()), steps
    assert any(name.startswith("bench/run") for name in steps)
    assert any(name.startswith("live analysis") for name in steps)
    assert any(name.startswith("speech socket cliff curve") for name in steps)
    checks = next(s for s in results["steps"] if s["name"] == "parity tiny packs")["data"]
    rows = {(c["model"].split()[0], c["name"]): c for c in checks["checks"]}
    assert all(c["passed"] for c in rows.values())
    assert rows[("clap", "log-mel in graph vs ClapFeatureExtractor (dB)")]["value"] <= 1e-3
    assert {m for m, _ in rows} == {"clap", "emotion2vec", "chattts"}
    report = (run / "report.md").read_text()
    assert "graph features" in report and "host CPU" in report
