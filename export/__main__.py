"""`python -m export <model> ...` builds a model pack; `python -m export demo` the tiny ones."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

MODELS = {
    "clap": "export.clap",
    "emotion2vec": "export.emotion2vec",
    "chattts": "export.chattts",
}
SUMMARIES = {
    "clap": "LAION CLAP (transformers.ClapModel) -> model pack",
    "emotion2vec": "Emotion2Vec+ (FunASR) -> model pack",
    "chattts": "ChatTTS -> model pack",
}
"""Each model's one-line help: its module imports torch, so only the chosen one loads."""


def parser(chosen: str | None) -> argparse.ArgumentParser:
    """The command line; only the `chosen` model's own arguments are added (importing
    its module), so `--help` and a bad command line cost no torch import."""
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    sub = parser.add_subparsers(dest="model", required=True)
    for name, module_name in MODELS.items():
        p = sub.add_parser(name, help=SUMMARIES[name], description=SUMMARIES[name])
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(run=module.run)
    demo = sub.add_parser("demo", help="build every tiny (random-weight) pack that is missing")
    demo.add_argument("--models-dir", type=Path, default=Path("models"))
    demo.add_argument("--force", action="store_true", help="rebuild even if present")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    args = parser(chosen if chosen in MODELS else None).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.model == "demo":
            return build_demo(args.models_dir, args.force)
        return int(args.run(args) or 0)
    except OSError as exc:  # a checkpoint or asset not there, the hub out of reach
        logging.getLogger("export").debug("failed", exc_info=exc)
        print(f"python -m export {args.model}: {exc}", file=sys.stderr)
        return 1


def build_demo(models_dir: Path, force: bool) -> int:
    """The offline default: tiny packs of every model, flagged demo in their manifests."""
    for name, module_name in MODELS.items():
        out = models_dir / name
        if (out / "manifest.json").is_file() and not force:
            logging.info("%s: %s exists, kept", name, out)
            continue
        module = importlib.import_module(module_name)
        module.build_tiny(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
