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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    sub = parser.add_subparsers(dest="model", required=True)
    for name, module_name in MODELS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    demo = sub.add_parser("demo", help="build every tiny (random-weight) pack that is missing")
    demo.add_argument("--models-dir", type=Path, default=Path("models"))
    demo.add_argument("--force", action="store_true", help="rebuild even if present")
    args = parser.parse_args(argv)
    if args.model == "demo":
        return build_demo(args.models_dir, args.force)
    return int(args.run(args) or 0)


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
