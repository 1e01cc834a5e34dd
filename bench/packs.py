"""Model packs for the bench, built with the project's own exporters when missing.

Each export runs in its own interpreter (torch stays out of the bench process) and calls
the exporter module directly (`export.<model>.add_arguments/run`), so one model whose
exporter is not there yet does not stop the others. Tiny packs are the default;
`random_real=True` builds random weights at the real sizes (what the figures should use).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.server import REPO

EXPORTERS = {"clap": "export.clap", "emotion2vec": "export.emotion2vec",
             "chattts": "export.chattts"}
ENDPOINT_MODEL = {"classify": "clap", "emotion": "emotion2vec", "tts": "chattts"}
_RANDOM_REAL_ARGS = {"clap": ["--random-real"], "emotion2vec": ["--random-real", "base"],
                     "chattts": ["--random-real"]}
_RUN = ("import argparse, importlib, sys; m = importlib.import_module(sys.argv[1]); "
        "p = argparse.ArgumentParser(); m.add_arguments(p); "
        "sys.exit(int(m.run(p.parse_args(sys.argv[2:])) or 0))")


@dataclass(frozen=True)
class PackStatus:
    model: str
    path: Path
    ready: bool
    note: str


def exporter_available(model: str, root: Path = REPO) -> bool:
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.util.find_spec(EXPORTERS[model]) is not None


def export_args(model: str, out: Path, random_real: bool) -> list[str]:
    return [*(_RANDOM_REAL_ARGS[model] if random_real else ["--tiny"]), "--out", str(out)]


def ensure_pack(model: str, models_dir: Path, *, random_real: bool = False,
                log_dir: Path | None = None, timeout_s: float = 3600) -> PackStatus:
    out = models_dir / model
    if (out / "manifest.json").is_file():
        return PackStatus(model, out, True, "present")
    if not exporter_available(model):
        return PackStatus(model, out, False, f"{EXPORTERS[model]} not available yet")
    cmd = [sys.executable, "-c", _RUN, EXPORTERS[model], *export_args(model, out, random_real)]
    log = (log_dir / f"export_{model}.log") if log_dir else None
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as sink:
            done = subprocess.run(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                                  timeout=timeout_s, check=False)
    else:
        done = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT, timeout=timeout_s, check=False)
    if done.returncode != 0 or not (out / "manifest.json").is_file():
        return PackStatus(model, out, False, f"export failed ({done.returncode}); see {log}")
    return PackStatus(model, out, True, "exported " + ("random-real" if random_real else "tiny"))
