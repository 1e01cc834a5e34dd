"""The benchmark's peers are installable as the README says, and a peer left out is said
out loud, never silently."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from bench import peers
from bench import run as bench_run

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = {"litserve": "litserve", "ray.serve": "ray[serve]"}
"""What installs each peer's module."""


def _extra(name: str) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements: list[str] = project["optional-dependencies"][name]
    return requirements


def test_the_bench_extra_installs_every_peer() -> None:
    bench = _extra("bench")
    reachable = " ".join(bench + (_extra("cluster") if "audioserve[cluster]" in bench else []))
    for module, *_ in (spec[1:] for spec in peers.PEERS.values()):
        assert DISTRIBUTION[module] in reachable, f"{module}: not in the bench extra"
    assert 'pip install -e ".[cpu,bench]"' in (ROOT / "README.md").read_text()


def test_a_peer_that_is_not_installed_is_said_skipped(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(peers, "missing", lambda peer: {"litserve": "litserve",
                                                         "rayserve": "ray.serve"}[peer])
    args = argparse.Namespace(peers=True, batch_size=8, max_wait_ms=5.0, threads=1, workers=1,
                              deadline_s=30.0, max_queue=64)
    notes: list[str] = []
    ran = bench_run.measure_peers(args, Path("unused"), {"classify": object()},  # type: ignore[dict-item]
                                  None, Path("unused"), notes)  # type: ignore[arg-type]
    assert ran == []
    out = capsys.readouterr().out
    for title, module in (("LitServe", "litserve"), ("Ray Serve", "ray.serve")):
        assert f"WARNING: PEER SKIPPED: {title}: `{module}` is not installed" in out
        assert any(n.startswith(f"**PEER SKIPPED**: {title}") for n in notes)


def test_no_peers_is_said_too(capsys: pytest.CaptureFixture[str]) -> None:
    notes: list[str] = []
    args = argparse.Namespace(peers=False)
    assert bench_run.measure_peers(args, Path("unused"), {}, None, Path("unused"),  # type: ignore[arg-type]
                                   notes) == []
    assert "PEER SKIPPED" in capsys.readouterr().out and "--no-peers" in notes[0]
