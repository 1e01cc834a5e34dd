"""`python -m quant <pack> --to fp16|int8 [...]` and `python -m quant report <pack>`.

Examples::

    python -m quant models/clap --to fp16
    python -m quant models/clap --to int8 --calibration ~/clips     # per-graph defaults
    python -m quant models/chattts --to int8 --bits 4               # weight-only, 4-bit
    python -m quant models/clap --to int8 --method weight-only      # every graph alike
    python -m quant models/emotion2vec --to int8 --method dynamic   # batch-DEPENDENT
    python -m quant report models/clap                     # the report on stdout
    python -m quant report models/clap --out reports/clap-quant.md
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from quant.recipes import Method

if TYPE_CHECKING:  # onnxruntime.quantization: imported once the command line is read
    from quant.calibration import AudioSource


def _variant_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m quant",
                                description="fp16 / int8 variants of a model pack; "
                                            "`python -m quant report PACK --help`: the report")
    p.add_argument("pack", type=Path, help="pack folder (holds manifest.json)")
    p.add_argument("--to", required=True, choices=["fp16", "int8"])
    p.add_argument("--method", choices=[m.value for m in Method],
                   help="int8 method for every graph (default per graph: static for CLAP "
                        "audio, weight-only elsewhere; see quant/recipes.py); dynamic is "
                        "batch-dependent")
    p.add_argument("--bits", type=int, choices=[8, 4], default=8,
                   help="weight-only bits (4 is recorded under the int8 precision)")
    p.add_argument("--accuracy-level", type=int, choices=[4],
                   help="weight-only: int8 activations inside MatMulNBits (faster on CPU; "
                        "batch-dependent on padded graphs, flagged so)")
    _source_arguments(p, "calibration", items=16, seed=0)
    return p


def _report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m quant report",
                                description="size, CPU latency, parity and batch invariance "
                                            "of every precision of a pack")
    p.add_argument("pack", type=Path)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per latency figure")
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: all)")
    p.add_argument("--graphs", help="comma-separated graphs to report (default: all)")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="also write the report (Markdown) to FILE; default: stdout only")
    _source_arguments(p, "inputs", items=8, seed=1)
    return p


def _source_arguments(p: argparse.ArgumentParser, name: str, *, items: int, seed: int) -> None:
    p.add_argument(f"--{name}", type=Path, dest="folder", metavar="DIR",
                   help="folder of audio files (decoded as the service does); "
                        "default: generated signals")
    p.add_argument("--prompts", type=Path, help="text file, one prompt per line")
    p.add_argument("--items", type=int, default=items,
                   help="how many items (audio clips, or prompts, cycled if fewer)")
    p.add_argument("--seconds", type=float, default=3.0, help="longest audio item, seconds")
    p.add_argument("--seed", type=int, default=seed, help="seed of generated signals")


def _source(args: argparse.Namespace) -> AudioSource:
    from quant.calibration import AudioSource

    return AudioSource(folder=args.folder, count=args.items, seconds=args.seconds,
                       seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    """What `_run` does; a pack or file that is not there is one line and status 1."""
    from service.errors import PackError

    try:
        return _run(sys.argv[1:] if argv is None else argv)
    except (PackError, OSError) as exc:
        logging.getLogger("quant").debug("failed", exc_info=exc)
        print(f"python -m quant: {exc}", file=sys.stderr)
        return 1


def _run(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # the quantizers' per-tensor and per-node chatter
    logging.getLogger("root").setLevel(logging.ERROR)
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)
    if argv[:1] == ["report"]:
        args = _report_parser().parse_args(argv[1:])
        from quant.calibration import prompts_from
        from quant.report import ReportOptions, write_report

        options = ReportOptions(source=_source(args), prompts=tuple(prompts_from(args.prompts)),
                                repeats=args.repeats, threads=args.threads,
                                graphs=tuple(args.graphs.split(",")) if args.graphs else (),
                                out=args.out)
        print(write_report(args.pack, options))
        if args.out is not None:
            print(f"report written to {args.out}", file=sys.stderr)
        return 0
    args = _variant_parser().parse_args(argv)
    from quant.calibration import prompts_from
    from quant.variants import VariantRequest, make_variants

    if args.to == "fp16" and args.method:
        raise SystemExit("--method applies to --to int8 only")
    request = VariantRequest(precision=args.to,
                             method=Method(args.method) if args.method else None,
                             bits=args.bits, accuracy_level=args.accuracy_level,
                             source=_source(args),
                             prompts=tuple(prompts_from(args.prompts)))
    for graph, entry in make_variants(args.pack, request).items():
        q = entry["quantization"]
        flag = "" if entry["batch_invariant"] else "  (batch-DEPENDENT)"
        print(f"{graph}: {entry['file']} [{q['method']}]{flag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
