"""`aeguard score`: batch-score a CSV/Parquet file or Parquet dataset: in-process, via a server, or on Spark.

Examples::

    aeguard score --model model.onnx --input events.parquet --output scores.parquet --top-k 3
    aeguard score --model model.onnx --input day/ --output scores.csv --id-column event_id --json
    aeguard score --target 127.0.0.1:50051 --input events.csv --output scores.parquet
    aeguard score --engine spark --master 'local[4]' --model model.onnx --input day/ --output out.parquet
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from service.batch.config import DEFAULT_CHUNK_ROWS, DEFAULT_REMOTE_BATCH_ROWS, BatchConfig
from service.batch.local import score_file
from service.batch.pushgateway import push_metrics
from service.batch.remote import RemoteScorer
from service.batch.rows import ScoreFn, SeriesScorer
from service.batch.spark import run_spark
from service.batch.summary import Summary
from service.client import Security
from service.errors import AeguardError, InvalidInputError
from service.scorer import Scorer
from service.window_scoring import CarriedWindows

log = logging.getLogger(__name__)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="the ONNX model file (not needed with --target)")
    parser.add_argument(
        "--input", required=True, help="a .csv or .parquet file, or a directory of Parquet files"
    )
    parser.add_argument("--output", required=True, help="output file; .parquet or .csv picks the format")
    parser.add_argument(
        "--engine", choices=("local", "spark"), default="local", help="where to score (default: local)"
    )
    parser.add_argument("--master", help="Spark master URL with --engine spark, e.g. 'local[4]'")
    parser.add_argument("--target", metavar="HOST:PORT", help="score through a running aeguard server")
    parser.add_argument(
        "--model-name", help="with --target: the server's model to use (default: its default)"
    )
    parser.add_argument(
        "--remote-batch-rows",
        type=_positive,
        default=DEFAULT_REMOTE_BATCH_ROWS,
        help=f"with --target: rows per ScoreStream request, at most the server's --max-batch-rows "
        f"(default {DEFAULT_REMOTE_BATCH_ROWS})",
    )
    parser.add_argument(
        "--connect-timeout-s",
        type=float,
        default=10.0,
        help="with --target: seconds to wait for the server to accept the connection (default 10)",
    )
    parser.add_argument(
        "--tls", action="store_true", help="with --target: TLS, the server checked against the system's CAs"
    )
    parser.add_argument("--tls-ca", default="", metavar="PEM", help="with --target: CA of the server (TLS)")
    parser.add_argument(
        "--tls-cert", default="", metavar="PEM", help="with --target: client certificate (mutual TLS)"
    )
    parser.add_argument("--tls-key", default="", metavar="PEM", help="with --target: key of --tls-cert")
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help="with --target: file holding the bearer token (default: the AEGUARD_TOKEN variable)",
    )
    parser.add_argument(
        "--chunk-rows",
        type=_positive,
        default=DEFAULT_CHUNK_ROWS,
        help=f"rows read, scored and written at a time; bounds memory (default {DEFAULT_CHUNK_ROWS})",
    )
    parser.add_argument("--id-column", help="input column copied to the output first, to join scores back")
    parser.add_argument(
        "--keep-columns", default="", help="comma-separated input columns to copy to the output"
    )
    parser.add_argument(
        "--top-k",
        type=_non_negative,
        default=0,
        metavar="K",
        help="add the K features with the largest error",
    )
    parser.add_argument(
        "--on-bad-rows",
        choices=("fail", "flag"),
        default="fail",
        help="rows with missing, non-numeric, NaN or infinite features: fail naming them and write "
        "nothing (default), or flag: write them with null scores and an 'error' column",
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="an input without rows gives an empty output with the full schema (default: refused, "
        "as `aeguard train` and `evaluate` refuse it)",
    )
    _add_window_arguments(parser)
    parser.add_argument("--threads", type=_positive, default=1, help="onnxruntime threads (default 1)")
    parser.add_argument(
        "--pushgateway", metavar="URL", help="push job metrics to this Prometheus Pushgateway"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")


def _add_window_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags for windowed models' rows (docs/batch.md, "Windowed models")."""
    parser.add_argument(
        "--time-column",
        metavar="COL",
        help="windowed models: the column ordering each series' rows in time, in seconds or date-times "
        "(default: the model's time column; '' = none, rows are taken in input order without gaps)",
    )
    parser.add_argument(
        "--series-column",
        metavar="COL",
        help="windowed models: the column naming each row's series (default: the model's; '' = one series)",
    )


def config_from_args(args: argparse.Namespace) -> BatchConfig:
    """Build and check the job's config from parsed arguments."""
    if args.target and args.engine == "spark":
        raise InvalidInputError("--target scores through a server; it cannot be combined with --engine spark")
    if not args.target and not args.model:
        raise InvalidInputError("--model is required (unless --target scores through a server)")
    if args.master and args.engine != "spark":
        raise InvalidInputError("--master only applies to --engine spark")
    remote = (args.tls, args.tls_ca, args.tls_cert, args.tls_key, args.token_file)
    if any(remote) and not args.target:
        raise InvalidInputError("--tls, --tls-ca, --tls-cert, --tls-key and --token-file need --target")
    return BatchConfig(
        model_path=args.model or "",
        input_path=args.input,
        output_path=args.output,
        engine=args.engine,
        master=args.master,
        target=args.target,
        model_name=args.model_name,
        remote_batch_rows=args.remote_batch_rows,
        connect_timeout_s=args.connect_timeout_s,
        tls=args.tls,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        token=_token(args.token_file) if args.target else "",
        chunk_rows=args.chunk_rows,
        id_column=args.id_column,
        keep_columns=tuple(c.strip() for c in args.keep_columns.split(",") if c.strip()),
        top_k=args.top_k,
        on_bad_rows=args.on_bad_rows,
        allow_empty=args.allow_empty,
        time_column=args.time_column,
        series_column=args.series_column,
        threads=args.threads,
        pushgateway=args.pushgateway,
        progress=not args.no_progress and not args.json,
    )


def _token(path: str | None) -> str:
    """The bearer token: the first non-comment line of ``path``, else ``AEGUARD_TOKEN``, else none."""
    if not path:
        return os.environ.get("AEGUARD_TOKEN", "").strip()
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise InvalidInputError(f"--token-file {path}: cannot read it ({exc.strerror})") from None
    token = next((x.strip() for x in lines if x.strip() and not x.startswith("#")), "")
    if not token:
        raise InvalidInputError(f"--token-file {path}: no token in it")
    return token


def run_job(config: BatchConfig) -> Summary:
    """Run one batch job with the engine the config names; raise an AeguardError on failure."""
    if config.engine == "spark":
        return run_spark(config)
    if config.target:
        with RemoteScorer.connect(
            config.target,
            config.model_name,
            feature_errors=config.top_k > 0,
            batch_rows=config.remote_batch_rows,
            connect_timeout_s=config.connect_timeout_s,
            security=Security(
                tls=config.tls,
                tls_ca=config.tls_ca,
                tls_cert=config.tls_cert,
                tls_key=config.tls_key,
                token=config.token,
            ),
        ) as remote:
            remote_fn: ScoreFn | SeriesScorer = remote if remote.metadata.is_windowed else remote.score
            return score_file(config, remote.metadata, remote_fn, engine=f"remote {config.target}")
    scorer = Scorer.load(config.model_path, intra_op_threads=config.threads)
    local_fn: ScoreFn | SeriesScorer = (
        CarriedWindows(scorer)
        if scorer.window is not None
        else lambda x, fe: scorer.score(x, with_feature_errors=fe)
    )
    return score_file(config, scorer.metadata, local_fn, engine="local")


@contextlib.contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    """Make SIGTERM unwind like Ctrl-C while the job runs: temporary output is removed, exit is non-zero."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _push(url: str, summary: Summary | None, duration_s: float) -> None:
    """Push the run's metrics; a gateway that cannot be reached costs a warning, not the job's result."""
    try:
        push_metrics(url, summary, duration_s)
    except AeguardError as exc:
        log.warning("%s", exc.message)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    started = time.perf_counter()
    summary: Summary | None = None
    try:
        with _interrupt_on_sigterm():
            summary = run_job(config)
            summary.total_s = time.perf_counter() - started
    finally:
        if config.pushgateway:
            # The summary's own total when there is one: the printed and the pushed time are one figure.
            _push(config.pushgateway, summary, summary.total_s if summary else time.perf_counter() - started)
    print(summary.to_json() if args.json else summary.to_text(), file=sys.stdout)
    return 0
