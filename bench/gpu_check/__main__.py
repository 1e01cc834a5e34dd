"""`python -m bench.gpu_check`: everything a GPU should confirm, in one command, in one report.

    python -m bench.gpu_check --provider cuda            # on the GPU machine (device.sh)
    python -m bench.gpu_check --provider cpu --tiny --quick   # CI smoke: same steps, small

Steps, in order of what matters most, each bounded by what is left of `--budget-s`
(default 450 s: the issue's 8 minutes less the install), a step that does not fit is
reported as skipped, never left running:
1. environment: onnxruntime build and providers, GPU, torch;
2. packs exported here with the project's own code: tiny packs of all three models, and
   (unless --tiny) random weights at the real sizes, with CLAP's and Emotion2Vec+'s fp16
   variants (`python -m quant`), since CUDA serves fp16 by default;
3. parity and batch invariance on the provider (bench/gpu_check/parity.py): CLAP's graph
   features and host features, Emotion2Vec+'s padded batches, ChatTTS's device KV cache;
4. the test modules that drive the real app, with AUDIOSERVE_PROVIDER set (the app's
   sessions then run on it; tests' own reference sessions stay on CPU);
5. `bench/run` for CLAP and Emotion2Vec+ (batching on and off, raw ceiling), the TTS
   engine benchmark, CLAP host vs graph features, and host CPU per request.
The report goes to `--out/<stamp>/report.md` with `results.json` and the logs; a
non-zero exit means a check failed or a step broke.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.server import REPO

EXPORT = ("import argparse, importlib, sys; m = importlib.import_module(sys.argv[1]); "
          "p = argparse.ArgumentParser(); m.add_arguments(p); "
          "sys.exit(int(m.run(p.parse_args(sys.argv[2:])) or 0))")
MODULES = {"clap": "export.clap", "emotion2vec": "export.emotion2vec",
           "chattts": "export.chattts"}
REAL_ARGS = {"clap": ["--random-real"], "emotion2vec": ["--random-real", "base"],
             "chattts": ["--random-real"]}
APP_TESTS = ["tests/test_clap_waveform.py", "tests/test_tts_engine.py",
             "tests/test_emotion2vec_api.py"]


@dataclass
class Step:
    name: str
    status: str = "pending"  # ok | failed | skipped
    seconds: float = 0.0
    output: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class Check:
    """The run: a deadline, the steps done so far, and where everything is written."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.deadline = self.started + args.budget_s
        stamp = datetime.now(UTC).strftime("%Y-%m-%d-%H%M")
        self.out = args.out / f"{stamp}-{args.provider}{'-tiny' if args.tiny else ''}"
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.work = args.work or (REPO / "models" / "gpu-check")
        self.steps: list[Step] = []
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "PYTHONUNBUFFERED": "1"}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, cmd: list[str], *, need_s: float, max_s: float,
            env: dict[str, str] | None = None) -> Step:
        """A subprocess step, bounded by its own limit and what is left of the budget."""
        step = Step(name)
        self.steps.append(step)
        if self.left() < need_s:
            step.status = "skipped"
            step.output = f"skipped: {self.left():.0f} s left, the step needs ~{need_s:.0f} s"
            print(f"[gpu_check] {name}: {step.output}", flush=True)
            return step
        limit = max(5.0, min(max_s, self.left() - 5.0))
        print(f"[gpu_check] {name} (limit {limit:.0f} s): {' '.join(cmd)}", flush=True)
        t0 = time.monotonic()
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
        log = self.logs / f"{len(self.steps):02d}-{safe}.log"
        try:
            done = subprocess.run(cmd, cwd=REPO, env=env or self.env, capture_output=True,
                                  text=True, timeout=limit, check=False)
            step.output = done.stdout + done.stderr
            step.status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired as exc:
            step.output = ((exc.stdout or b"").decode(errors="replace")
                           if isinstance(exc.stdout, bytes) else str(exc.stdout or ""))
            step.status = f"failed (timed out after {limit:.0f} s)"
        step.seconds = time.monotonic() - t0
        log.write_text(step.output)
        print(f"[gpu_check] {name}: {step.status} in {step.seconds:.1f} s", flush=True)
        return step


def environment(provider: str) -> dict[str, Any]:
    import onnxruntime as ort

    info: dict[str, Any] = {"python": platform.python_version(),
                            "machine": f"{platform.node()} {os.cpu_count()} cores",
                            "onnxruntime": f"{ort.__version__} ({ort.get_device()})",
                            "providers": ort.get_available_providers()}
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             check=False)
        info["gpu"] = smi.stdout.strip() or smi.stderr.strip()
    try:
        import torch

        info["torch"] = f"{torch.__version__}, CUDA {torch.version.cuda}"
    except ImportError:
        info["torch"] = "not installed"
    if provider == "cuda" and "CUDAExecutionProvider" not in info["providers"]:
        raise SystemExit(f"--provider cuda, but onnxruntime offers {info['providers']}: "
                         "install onnxruntime-gpu (bench/gpu_check/device.sh does)")
    return info


def export_packs(check: Check, flavour: str, models: list[str]) -> dict[str, Path]:
    """Export the packs (in parallel: each exporter is mostly single-threaded torch)."""
    root = check.work / flavour
    procs = []
    packs: dict[str, Path] = {}
    t0 = time.monotonic()
    for model in models:
        out = root / model
        packs[model] = out
        if (out / "manifest.json").is_file():
            continue
        args = ["--tiny"] if flavour == "tiny" else REAL_ARGS[model]
        log = open(check.logs / f"export-{flavour}-{model}.log", "w")  # noqa: SIM115
        procs.append((model, log, subprocess.Popen(
            [sys.executable, "-c", EXPORT, MODULES[model], *args, "--out", str(out)],
            cwd=REPO, env={**check.env, "OMP_NUM_THREADS": "4"}, stdout=log,
            stderr=subprocess.STDOUT)))
    step = Step(f"export {flavour} packs")
    check.steps.append(step)
    failed = []
    for model, log, proc in procs:
        try:
            code = proc.wait(timeout=max(10.0, check.left() - 30.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            code = -9
        log.close()
        if code != 0:
            failed.append(f"{model} (exit {code})")
            packs.pop(model, None)
    step.seconds = time.monotonic() - t0
    step.status = "ok" if not failed else f"failed: {', '.join(failed)}"
    step.output = f"{sorted(packs)} in {root}"
    print(f"[gpu_check] {step.name}: {step.status} in {step.seconds:.1f} s", flush=True)
    return packs


def quantize(check: Check, packs: dict[str, Path], precision: str) -> None:
    for model in ("clap", "emotion2vec"):
        if model in packs and precision not in _precisions(packs[model]):
            check.run(f"quant {model} {precision}", [sys.executable, "-m", "quant",
                                                     str(packs[model]), "--to", precision],
                      need_s=30, max_s=240)


def _precisions(pack_dir: Path) -> list[str]:
    from service.runtime.packs import load_pack

    return load_pack(pack_dir).common_precisions()


def parity(check: Check, packs: dict[str, Path], precisions: list[str], label: str) -> None:
    from bench.gpu_check.parity import run_all

    step = Step(f"parity {label}")
    check.steps.append(step)
    t0 = time.monotonic()
    rows = run_all(packs, check.args.provider, precisions)
    step.seconds = time.monotonic() - t0
    step.data["checks"] = [r.row() for r in rows]
    step.status = "ok" if all(r.passed for r in rows) else "failed"
    print(f"[gpu_check] {step.name}: {step.status} in {step.seconds:.1f} s", flush=True)
    for r in rows:
        print(f"    {'ok ' if r.passed else 'BAD'} {r.model}: {r.name} = {r.value:.3g}"
              f"{'' if r.bar is None else f' (bar {r.bar:g})'} {r.detail}", flush=True)


def benchmarks(check: Check, real: dict[str, Path], tiny: dict[str, Path]) -> None:
    a, py = check.args, sys.executable
    packs = real or tiny
    flavour = "random-real" if real else "tiny"
    endpoints = ",".join(e for e, m in (("classify", "clap"), ("emotion", "emotion2vec"))
                         if m in packs)
    if endpoints:
        conc = ["1", "4"] if a.quick else ["1", "8", "64"]
        cmd = [py, "-m", "bench.run", "--quick", "--no-peers", "--endpoints", endpoints,
               "--concurrency", *conc, "--models-dir", str(packs["clap"].parent),
               "--out", str(check.out / "bench_run"), *(["--random-real"] if real else [])]
        if a.quick:
            cmd += ["--duration", "1"]
        check.run(f"bench/run {flavour} (batching on and off)", cmd,
                  need_s=40 if a.quick else 120, max_s=300)
    if "chattts" in packs:
        cmd = [py, "-m", "bench.bench_tts_engine", "--pack", str(packs["chattts"]),
               "--provider", a.provider, "--quick", *(["--decode-only"] if a.quick else [])]
        check.run(f"TTS engine {flavour}", cmd, need_s=30, max_s=180)
    if "clap" in packs:
        cmd = [py, "-m", "bench.bench_clap_features", "--pack", str(packs["clap"]),
               "--provider", a.provider, "--batches", "1", "8",
               "--rounds", "2" if a.quick else "5"]
        check.run(f"CLAP features host vs graph {flavour} fp32", cmd, need_s=20, max_s=120)
        if "fp16" in _precisions(packs["clap"]):
            check.run(f"CLAP features host vs graph {flavour} fp16", [*cmd, "--precision",
                                                                       "fp16"],
                      need_s=20, max_s=120)
        cmd = [py, "-m", "bench.bench_host_cpu", "--models-dir", str(packs["clap"].parent),
               "--provider", a.provider, "--endpoints", "classify",
               *([] if a.quick or "chattts" not in packs else ["tts"]),
               "--requests", "10" if a.quick else "40", "--concurrency", "2",
               "--out", str(check.out / "host_cpu"),
               *(["--uploads", "wav 48k"] if a.quick else [])]
        check.run(f"host CPU per request {flavour}", cmd, need_s=40, max_s=180)
    live_streams(check, packs, flavour)


SPEECH_DIRS = (REPO / "models" / "speech", REPO.parent / "shared" / "data" / "speech")
"""Real speech for the live bench: ../shared's clips, or a copy in the ignored models/
(carried to a device machine, which has no ../shared; docs/gpu-check.md)."""


def live_streams(check: Check, packs: dict[str, Path], flavour: str) -> None:
    """The two WebSocket benches: live analysis streams and the speech cliff curve."""
    a, py = check.args, sys.executable
    if "clap" in packs and "emotion2vec" in packs:
        speech = next((d for d in SPEECH_DIRS if any(d.glob("*.flac"))), None)
        if speech is None:
            step = Step(f"live analysis streams {flavour}", status="skipped",
                        output=f"skipped: no speech clips in {' or '.join(map(str, SPEECH_DIRS))}")
            check.steps.append(step)
        else:
            streams = ["1", "2"] if a.quick else ["8", "16", "32", "64"]
            cmd = [py, "-m", "bench.bench_live", "--models-dir", str(packs["clap"].parent),
                   "--speech-dir", str(speech), "--streams", *streams,
                   "--seconds", "4" if a.quick else "12", "--ceiling-seconds",
                   "0.5" if a.quick else "3", "--ceiling-at", "end",
                   "--out", str(check.out / "live"),
                   *(["--no-unbatched"] if a.quick else [])]
            check.run(f"live analysis streams {flavour}", cmd, need_s=40 if a.quick else 150,
                      max_s=420)
    if "chattts" in packs:
        cmd = [py, "-m", "bench.bench_speech_stream", "--models-dir",
               str(packs["chattts"].parent), "--turns", "1" if a.quick else "2",
               "--sessions", "1,4" if a.quick else "1,4,16,64,128",
               "--tokens", "20" if a.quick else "60", "--min-replies", "1" if a.quick else "6",
               "--spread", "1" if a.quick else "5", "--servers", "continuous,sequential",
               "--out", str(check.out / "speech_stream")]
        check.run(f"speech socket cliff curve {flavour}", cmd, need_s=40 if a.quick else 150,
                  max_s=420)


def app_tests(check: Check) -> None:
    if check.args.no_pytest:
        return
    env = {**check.env, "AUDIOSERVE_PROVIDER": check.args.provider}
    check.run("app tests on the provider", [sys.executable, "-m", "pytest", "-q", "-x",
                                            "-p", "no:cacheprovider", *APP_TESTS],
              need_s=60, max_s=240, env=env)


def write_report(check: Check, env: dict[str, Any]) -> Path:
    lines = [f"# GPU check: {check.args.provider}{' (tiny, quick)' if check.args.tiny else ''}",
             "", f"Started {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
             f"{time.monotonic() - check.started:.0f} s of a {check.args.budget_s:g} s budget. "
             f"Command: `python -m bench.gpu_check {' '.join(sys.argv[1:])}`", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()] + ["", "| step | status | s |",
                                                          "| --- | --- | ---: |"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.1f} |" for s in check.steps]
    for s in check.steps:
        if "checks" in s.data:
            lines += ["", f"## {s.name}", "", "| model | check | value | bar | pass | detail |",
                      "| --- | --- | ---: | ---: | --- | --- |"]
            lines += [f"| {c['model']} | {c['name']} | {c['value']:.3g} | "
                      f"{'-' if c['bar'] is None else format(c['bar'], 'g')} | "
                      f"{'yes' if c['passed'] else '**NO**'} | {c['detail']} |"
                      for c in s.data["checks"]]
    for s in check.steps:
        tables = [ln for ln in s.output.splitlines() if ln.startswith(("|", "- target", "##"))]
        if s.name.startswith(("bench/run", "TTS", "CLAP features", "host CPU")) and tables:
            lines += ["", f"## {s.name}", "", *tables[-60:]]
        elif s.status.startswith("failed"):
            lines += ["", f"## {s.name}: {s.status}", "", "```",
                      *s.output.strip().splitlines()[-25:], "```"]
    report = check.out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    results = {"environment": env, "steps": [s.__dict__ for s in check.steps]}
    (check.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    return report


def copy_out(check: Check) -> None:
    """Where the device tool brings files back ($OUT: at most 8 files, 2 folders down)."""
    dest = os.environ.get("OUT")
    if not dest or Path(dest).resolve() == check.out.resolve():
        return
    target = Path(dest)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("report.md", "results.json"):
        shutil.copy2(check.out / name, target / name)
    with tarfile.open(target / "gpu_check.tar.gz", "w:gz") as tar:
        tar.add(check.out, arcname=check.out.name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--provider", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="tiny packs only (CI smoke test)")
    p.add_argument("--quick", action="store_true", help="shortest benchmark settings")
    p.add_argument("--budget-s", type=float, default=450.0)
    p.add_argument("--no-pytest", action="store_true", help="skip the app test modules")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu")
    p.add_argument("--work", type=Path, help="where packs are exported (default "
                                             "models/gpu-check)")
    args = p.parse_args(argv)
    check = Check(args)
    if args.provider == "cuda":
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia pip packages, when present
    env = environment(args.provider)
    print(f"[gpu_check] {json.dumps(env)}", flush=True)
    tiny = export_packs(check, "tiny", list(MODULES))
    parity(check, tiny, ["fp32"], "tiny packs")
    real: dict[str, Path] = {}
    if not args.tiny:
        real = export_packs(check, "random-real", list(MODULES))
        quantize(check, real, "fp16")
        parity(check, real, ["fp32", "fp16"], "random-real packs")
    benchmarks(check, real, tiny)
    app_tests(check)
    report = write_report(check, env)
    copy_out(check)
    print(f"[gpu_check] report: {report}", flush=True)
    print(report.read_text())
    return 0 if all(s.status in ("ok", "skipped") for s in check.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
