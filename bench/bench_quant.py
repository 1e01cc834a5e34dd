"""Precision bench: fp16 and int8 of the heavy graphs at the real sizes (random weights).

The quant report's columns (size, CPU latency at batch 1 and 8, speed-up vs fp32 in the
same run, parity, batch invariance) for the graphs that dominate serving cost: CLAP's
audio tower (and its text tower: a full random-real CLAP export takes seconds),
Emotion2Vec+ base, and the ChatTTS GPT (with its two small embedding graphs, which the
greedy code-agreement run needs; the vocoder side is not exported). Each export runs in
its own interpreter so torch's memory is gone before ONNX Runtime starts.

Run from the repository root (minutes per model on 2 cores)::

    .venv/bin/python -m bench.bench_quant [--models clap,emotion2vec,chattts]
        [--out /tmp/quant-bench] [--tiny] [--also static,dynamic,...]
        [--results bench/results/quant.md]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from quant.recipes import recipe

REPO = Path(__file__).resolve().parents[1]
MODELS = ("clap", "emotion2vec", "chattts")
ALTERNATIVES = {
    "static": ["--method", "static"], "dynamic": ["--method", "dynamic"],
    "weight-only": ["--method", "weight-only"],
    "weight-only:4": ["--method", "weight-only", "--bits", "4"],
    "int8-compute": ["--method", "weight-only", "--accuracy-level", "4"],
}
GPT_ALTERNATIVES = ("weight-only:4", "int8-compute")
TIMED_GRAPHS = {"clap": ("audio", "text"), "emotion2vec": ("model",), "chattts": ("gpt",)}


def export_subset(model: str, out: Path, tiny: bool) -> None:
    """Write a pack holding only the benchmarked graphs (runs in a child interpreter)."""
    if model == "emotion2vec":
        from export.emotion2vec import build_random

        build_random(out, "tiny" if tiny else "base", seed=0)
    elif model == "clap":
        from export import clap

        if tiny:
            clap.build_tiny(out)
        else:
            clap.build_random_real(out)
    else:
        _export_chattts_gpt(out, tiny)


def _export_chattts_gpt(out: Path, tiny: bool) -> None:
    from export import chattts
    from export.chattts_modules import ChatTTSSizes, build_random
    from export.chattts_parity import random_feeds
    from export.chattts_tokenizer import TOKENIZER_FILE, build_tiny_tokenizer, write_tokenizer
    from export.pack import graph_entry, write_manifest

    tok = build_tiny_tokenizer()
    sizes = ChatTTSSizes.tiny(tok.get_vocab_size()) if tiny else ChatTTSSizes(
        **{**ChatTTSSizes.real().__dict__, "text_vocab_size": tok.get_vocab_size()})
    modules = build_random(sizes, chattts.TINY_SEED)
    spk_emb_id = chattts.special_token_ids(tok)["[spk_emb]"]
    specs = chattts.graph_specs(modules, spk_emb_id)
    feeds = random_feeds(modules, spk_emb_id, seed=1)
    out.mkdir(parents=True, exist_ok=True)
    graphs = {}
    for name in ("embed_text", "embed_code", "gpt"):
        spec = specs[name]
        path = out / f"{name}.fp32.onnx"
        chattts.export_graph(name, spec, feeds[name], path)
        graphs[name] = {"fp32": graph_entry(path.name, list(spec["inputs"]),
                                            list(spec["outputs"]))}
    write_tokenizer(tok, out)
    write_manifest(out, kind="chattts", demo=True, graphs=graphs,
                   source=f"{'tiny' if tiny else 'random-real'}(seed=0), GPT + embeddings",
                   files={"tokenizer": TOKENIZER_FILE},
                   constants=chattts.pack_constants(modules, tok, "tiny-wordpiece"))


def _python(*args: str) -> None:
    subprocess.run([sys.executable, *args], cwd=REPO, check=True)


def bench_model(model: str, root: Path, args: argparse.Namespace) -> str:
    pack = root / model
    started = time.monotonic()
    if not (pack / "manifest.json").is_file():
        _python("-m", "bench.bench_quant", "--export-only", model, "--out", str(root),
                *(["--tiny"] if args.tiny else []))
    exported = time.monotonic()
    calibration = ["--items", str(args.calibration_items), "--seconds", str(args.seconds)]
    for precision in ("fp16", "int8"):
        _python("-m", "quant", str(pack), "--to", precision, *calibration)
    quantized = time.monotonic()
    report = ["--repeats", str(args.repeats), "--seconds", str(args.seconds),
              "--threads", str(args.threads), "--graphs", ",".join(TIMED_GRAPHS[model])]
    out = subprocess.run([sys.executable, "-m", "quant", "report", str(pack), *report],
                         cwd=REPO, check=True, capture_output=True, text=True).stdout
    sections = [out.strip()]
    for choice in [m for m in args.also.split(",") if m]:
        flags = ALTERNATIVES[choice]
        if (model == "chattts") != (choice in GPT_ALTERNATIVES):
            continue  # static cannot calibrate a generation; 4-bit etc. only for the GPT
        if all(["--method", recipe(model, g).int8_method.value] == flags
               for g in TIMED_GRAPHS[model]):
            continue  # already the default, timed above
        other = root / f"{model}-{choice.replace(':', '')}"
        shutil.rmtree(other, ignore_errors=True)
        shutil.copytree(pack, other)
        _python("-m", "quant", str(other), "--to", "int8", *flags, *calibration)
        out = subprocess.run([sys.executable, "-m", "quant", "report", str(other), *report],
                             cwd=REPO, check=True, capture_output=True, text=True).stdout
        rows = [line if line.count("|") > 5 else f"| decode step (B=1, B=8 ms, speed-up) {line}"
                for line in out.splitlines() if line.startswith("| ") and "int8" in line]
        greedy = [line for line in out.splitlines() if line.startswith("- int8")]
        labels = ("greedy codes vs fp32", "greedy codes batched vs alone")
        rows += [f"\n{label}: {line[2:]}" for label, line in zip(labels, greedy, strict=False)]
        sections.append(f"int8 by `{' '.join(flags)}` instead (its own fp32 run for the "
                        "speed-up), same inputs:\n\n" + "\n".join(rows))
        shutil.rmtree(other, ignore_errors=True)
    sections.append(f"_export {exported - started:.0f} s, fp16 + int8 "
                    f"{quantized - exported:.0f} s, report {time.monotonic() - quantized:.0f} s_")
    text = "\n\n".join(sections)
    print(text, flush=True)
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--out", type=Path, default=Path("/tmp/quant-bench"))
    p.add_argument("--tiny", action="store_true", help="tiny configs (a quick dry run)")
    p.add_argument("--also", default="",
                   help=f"comma-separated other int8 recipes to time too: {list(ALTERNATIVES)}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0, help="audio item length")
    p.add_argument("--calibration-items", type=int, default=8)
    p.add_argument("--results", type=Path, help="also write the tables to this markdown file")
    p.add_argument("--export-only", choices=MODELS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.export_only:
        export_subset(args.export_only, args.out / args.export_only, args.tiny)
        return 0
    load = os.getloadavg()[0]
    sections = [bench_model(m.strip(), args.out, args) for m in args.models.split(",")
                if m.strip()]
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        head = (f"# Precision bench (random weights, CPU)\n\n`python -m bench.bench_quant "
                f"--also {args.also or '-'} --repeats {args.repeats}` on {os.cpu_count()} "
                f"cores shared with other work (load average {load:.1f} at the start, "
                f"{os.getloadavg()[0]:.1f} at the end): compare speed-ups within a table, "
                "not absolute times across tables.\n\n")
        args.results.write_text(head + "\n\n".join(sections) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
