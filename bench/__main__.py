"""`python -m bench` (`make bench`): serving throughput and latency against its floors.

The same run measures aeguard (``aeguard serve`` with its default processes and with one), two
no-op servers with the same messages (the transport floor: grpcio's sync server and ``grpc.aio``),
aeguard with the micro-batcher on, and in-process onnxruntime on the same model (the compute
limit), driven by one load generator in separate client processes, and prints the ratios and the
issue's targets. The batch job's figures (``bench/batch.py``) follow. ``--only peers``
(`make bench-peers`) measures Seldon MLServer beside aeguard instead (:mod:`bench.peers`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

from bench import loadgen
from service.errors import AeguardError

log = logging.getLogger("bench")


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _ints_or_none(text: str) -> list[int]:
    return [] if text.strip().lower() == "none" else _ints(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--only",
        choices=["server", "batch", "peers"],
        help="run one part only (default: server and batch; peers only when asked: make bench-peers)",
    )
    p.add_argument(
        "--model", type=Path, help="model to serve (default: models/default.onnx, trained if missing)"
    )
    p.add_argument("--duration-s", type=float, default=1.5, help="measured window per cell and round")
    p.add_argument("--warmup-s", type=float, default=0.5, help="unmeasured load before each window")
    p.add_argument("--repeat", type=int, default=3, help="rounds per cell; the median round is reported")
    p.add_argument("--concurrency", type=_ints, default=[1, 8, 64], help="unary batch-1 calls in flight")
    p.add_argument(
        "--batch-rows",
        type=_ints_or_none,
        default=[512, 4096],
        help="rows per request, large batches ('none': batch-1 workloads only)",
    )
    p.add_argument(
        "--batch-in-flight", type=int, default=4, help="requests in flight for the large-batch workloads"
    )
    p.add_argument(
        "--client-processes",
        type=int,
        default=os.cpu_count() or 2,
        help="load-generator processes (default: one per core)",
    )
    p.add_argument(
        "--channels",
        type=int,
        default=loadgen.DEFAULT_CHANNELS,
        help="channels (TCP connections) per client process; calls are spread over them round-robin",
    )
    p.add_argument("--noop-workers", type=int, default=8, help="thread-pool size of the sync no-op server")
    p.add_argument(
        "--micro-batch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure aeguard with --micro-batch-rows 256 --micro-batch-delay-ms 1 on batch-1 calls "
        "(8+ in flight)",
    )
    p.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure aeguard with TLS and a bearer token on batch-1 calls (what security costs)",
    )
    p.add_argument(
        "--mlserver-python",
        type=Path,
        default=Path(".venv-mlserver/bin/python"),
        help="python of MLServer's own virtual environment (--only peers)",
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for every `aeguard serve`, repeatable (e.g. --server-arg=--grace-s=1)",
    )
    p.add_argument("--out-dir", type=Path, default=Path("bench-results"), help="where the JSON goes")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    doc: dict[str, Any] = {
        "created_at": stamp,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            # Other work on the machine competes with the benchmark; the load average says how much.
            "load_average_1m_at_start": os.getloadavg()[0],
        },
    }
    try:
        if args.only in (None, "server"):
            from bench.model import ensure_model
            from bench.serving import run_server_bench

            model = ensure_model(args.model)
            doc["server"] = run_server_bench(model, args, log_dir=args.out_dir / "logs")
        if args.only == "peers":
            from bench.model import ensure_model
            from bench.peers import run_peers_bench

            doc["peers"] = run_peers_bench(ensure_model(args.model), args, log_dir=args.out_dir / "logs")
        if args.only in (None, "batch"):
            if importlib.util.find_spec("bench.batch") is None:
                print("\nbatch benchmark: bench/batch.py is not present yet; skipped")
                doc["batch"] = None
            else:
                from bench.batch import run_batch_bench

                doc["batch"] = run_batch_bench()
    except AeguardError as exc:
        print(f"bench: error: {exc.message}", file=sys.stderr)
        return 2
    from bench.report import write_json

    doc["machine"]["load_average_1m_at_end"] = os.getloadavg()[0]

    path = write_json(doc, args.out_dir, stamp)
    print(f"\nresults written to {path} (and {args.out_dir / 'latest.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
