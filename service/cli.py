"""`aeguard ...`: the one command-line entry point. Each sub-command lives in its own module.

A sub-command module defines ``add_arguments(parser)`` and ``run(args) -> int``. It is imported
only when that sub-command (or its ``--help``) is used, and must import heavy libraries (torch,
pyspark, grpc) inside ``run``, so ``aeguard serve`` never loads torch and ``aeguard train``
explains what to install when torch is missing.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from service.errors import AeguardError

log = logging.getLogger("aeguard")

#: sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("training.cli_train", "fit an autoencoder on a data file and export one ONNX model"),
    "inspect": ("service.cli_inspect", "show a model's metadata"),
    "evaluate": ("training.cli_evaluate", "score a data file with a model and report detection quality"),
    "serve": ("service.rpc.main", "serve models over gRPC with Prometheus metrics"),
    "score": ("service.batch.cli", "batch-score a file or dataset, locally or on Spark"),
    "benchmark": ("training.benchmark", "detection-quality benchmark against peer detectors"),
    "demo": ("service.demo", "train the built-in default model if missing, then serve it"),
}

#: Which extra brings a missing top-level module, for a message a person can act on.
EXTRAS = {
    "torch": "train",
    "onnx": "train",
    "sklearn": "train",
    "matplotlib": "train",
    "pyspark": "spark",
    "pandas": "spark",
    "pyod": "bench",
}


def _missing_extra(exc: ModuleNotFoundError) -> str | None:
    top = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return f"this command needs '{top}', which comes with the '{extra}' extra: pip install 'aeguard[{extra}]'"


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """Build the parser, importing only the module of the sub-command being asked for."""
    parser = argparse.ArgumentParser(prog="aeguard", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(levelname)s %(name)s: %(message)s",
        )
        return int(args._run(args) or 0)
    except AeguardError as exc:
        print(f"aeguard: error: {exc.message}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        hint = _missing_extra(exc)
        if hint is None:
            raise
        print(f"aeguard: error: {hint}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("aeguard: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
