"""`aeguard ...`: the one command-line entry point; each sub-command lives in its own module.

A sub-command module defines ``add_arguments(parser)`` and ``run(args) -> int``. It is imported
only when that sub-command (or its ``--help``) is used, and must import heavy libraries (torch,
pyspark, grpc) inside ``run``, so ``aeguard serve`` never loads torch and ``aeguard train``
explains what to install when torch is missing.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from service.errors import AeguardError

log = logging.getLogger("aeguard")

#: sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("training.cli_train", "fit an autoencoder on a data file and export one ONNX model"),
    "inspect": ("service.cli_inspect", "show a model's metadata"),
    "sample": ("service.cli_sample", "generate synthetic rows from a variational autoencoder's model file"),
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


#: What `aeguard --help` says to a user (the module docstring above is for developers).
DESCRIPTION = """\
Anomaly detection with an undercomplete autoencoder: train a model on normal data into one ONNX file,
then score new data with it, over gRPC (with Prometheus metrics) or in batch.
Higher scores are more anomalous; the thresholds stored in the model decide what is flagged."""

EPILOG = """\
first steps:
  aeguard demo                                      train the built-in example model, then serve it
  aeguard train data.csv --label-column label --out model.onnx
  aeguard inspect model.onnx                        thresholds, features, quality, training figures
  aeguard serve --model model.onnx                  gRPC on 127.0.0.1:50051, metrics on :9464
  aeguard score --model model.onnx --input events.parquet --output scores.parquet

`aeguard COMMAND --help` lists a command's options. Exit codes: 0 ok, 2 bad input or settings
(one line on stderr saying what to fix), 3 a missing optional extra, 130 interrupted."""


def package_version() -> str:
    """The installed aeguard's version, or ``unknown`` when run from a source tree that is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aeguard")
    except PackageNotFoundError:
        return "unknown"


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """Build the parser, importing only the module of the sub-command being asked for."""
    parser = argparse.ArgumentParser(
        prog="aeguard",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"aeguard {package_version()}", help="print the version"
    )
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
        status = int(args._run(args) or 0)
        # Flush here, inside the handlers, so a reader that went away surfaces as BrokenPipeError below
        # rather than at interpreter exit.
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # a broken socket or pipe of the command's own, not our stdout
        return _reader_went_away()
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


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end is closed (poll reports an error on it)."""
    import select

    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _reader_went_away() -> int:
    """stdout's reader closed early (``aeguard inspect m.onnx | head -1``): stop quietly, like cat."""
    # Python flushes stdout again at exit; point it at /dev/null so that flush cannot fail too.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    # 128 + SIGPIPE, what a shell reports for cat or grep in the same place.
    return 141


if __name__ == "__main__":
    sys.exit(main())
