"""Every command the project ships answers `--help` (usage, exit 0) without side effects,
and refuses an unknown argument (exit 2, a message). Commands are found by their
`if __name__ == "__main__"` (a new one is covered without being listed here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "export", "quant", "bench")
HEAVY = ("ray", "torch", "onnxruntime.quantization")
"""Not imported by `--help` (the app's onnxruntime may be: its settings are needed)."""
CHECK = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit as exit:
    code = exit.code
else:
    code = 0
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("IMPORTED", heavy, file=sys.stderr)
sys.exit(code)
"""


def commands() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if 'if __name__ == "__main__"' in path.read_text(encoding="utf-8"):
                parts = path.relative_to(ROOT).with_suffix("").parts
                found.append(".".join(parts[:-1] if parts[-1] == "__main__" else parts))
    return found


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_every_entry_point_is_found() -> None:
    found = commands()
    for expected in ("service", "service.cluster", "export", "quant", "bench.run",
                     "bench.gpu_check", "bench.cpu_probe", "bench.bench_batcher"):
        assert expected in found


@pytest.mark.parametrize("module", commands())
def test_help_and_an_unknown_argument(module: str, tmp_path: Path) -> None:
    """In an empty folder: --help writes nothing there, starts nothing, imports no
    ray/torch; `--no-such-flag` is exit 2 with argparse's message."""
    helped = run([sys.executable, "-c", CHECK.format(heavy=HEAVY), module], tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "usage:" in helped.stdout
    assert "IMPORTED []" in helped.stderr, f"--help of {module} imports {helped.stderr}"
    assert list(tmp_path.iterdir()) == []
    refused = run([sys.executable, "-m", module, "--no-such-flag"], tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "error:" in refused.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_bench_run_script(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    helped = subprocess.run([str(ROOT / "bench" / "run"), "--help"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "usage:" in helped.stdout, helped.stderr
    refused = subprocess.run([str(ROOT / "bench" / "run"), "--bogus"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "error:" in refused.stderr


@pytest.mark.parametrize(("args", "says"), [
    (["quant", "missing", "--to", "int8"], "python -m quant: model pack missing: missing "),
    (["quant", "report", "missing"], "python -m quant: model pack missing: missing "),
    (["export", "emotion2vec", "--model-dir", "missing"],
     "python -m export emotion2vec: missing: missing config.yaml"),
    (["export", "chattts", "--assets", "missing"],
     "python -m export chattts: ChatTTS tokenizer not found"),
])
def test_a_pack_or_checkpoint_not_there_is_one_line(args: list[str], says: str,
                                                    tmp_path: Path) -> None:
    """What the command was pointed at is not there: one line naming it, status 1."""
    if args[0] == "export":
        pytest.importorskip("torch", reason="the `export` extra")
    done = run([sys.executable, "-m", *args], tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(says) and len(done.stderr.splitlines()) == 1, done.stderr
