"""`python -m bench.responses`: what building and reading a ScoreResponse costs, per form.

No sockets: the server's share (``convert.score_response`` plus the serialisation grpcio does)
and the client's share (parse plus numpy arrays) of one response, for per-sample results and
for columnar results, next to onnxruntime's time to score the same batch. It also times the
alternative the columnar form did not take, packed repeated fields filled from numpy, which is
why ``ColumnarResults`` carries little-endian bytes (docs/serving-columnar.md).
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import AeguardError

#: Aim for this many samples per timing loop, so small batches are timed over many calls.
SAMPLES_PER_LOOP = 20_000


def _time_us(fn: Callable[[], Any], rows: int, repeat: int, samples_per_loop: int) -> float:
    """Best-of-``repeat`` CPU microseconds per call.

    CPU time of this process, not wall time: on a shared machine, time spent waiting for a core
    is not the response's cost. The fastest loop is the least disturbed one.
    """
    number = max(3, samples_per_loop // rows)
    return min(timeit.repeat(fn, number=number, repeat=repeat, timer=time.process_time)) / number * 1e6


def _read_per_sample(data: bytes) -> np.ndarray:
    from service.rpc.api import aeguard_pb2 as pb

    resp = pb.ScoreResponse.FromString(data)
    return np.array([r.score for r in resp.results], dtype=np.float32)


def _read_columnar(data: bytes) -> np.ndarray:
    from service.rpc.api import aeguard_pb2 as pb

    cols = pb.ScoreResponse.FromString(data).columns
    return np.frombuffer(cols.scores, dtype="<f4")


def _packed_columns_class() -> Any:
    """A message class with the four columns as packed repeated fields, built at run time.

    The alternative to ``ColumnarResults``' bytes columns, compiled by the same upb runtime, so
    the comparison is the encoding and nothing else.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(
        name="aeguard_bench_packed.proto", package="aeguard_bench", syntax="proto3"
    )
    m = f.message_type.add(name="PackedColumns")
    for number, (name, kind) in enumerate(
        [
            ("scores", fdp.TYPE_FLOAT),
            ("normalized_scores", fdp.TYPE_FLOAT),
            ("is_anomaly", fdp.TYPE_BOOL),
            ("severity", fdp.TYPE_UINT32),
        ],
        start=1,
    ):
        m.field.add(name=name, number=number, type=kind, label=fdp.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("aeguard_bench.PackedColumns"))


def measure(
    model_path: Path, batch_rows: list[int], repeat: int, samples_per_loop: int = SAMPLES_PER_LOOP
) -> list[dict[str, Any]]:
    """One row per batch size: microseconds per response for each form and side."""
    from service.model_store import ModelStore

    model = ModelStore().load_file(model_path)
    packed = _packed_columns_class()
    rng = np.random.default_rng(0)
    return [
        _measure_batch(
            model,
            packed,
            rng.normal(size=(n, model.metadata.n_features)).astype(np.float32),
            repeat,
            samples_per_loop,
        )
        for n in batch_rows
    ]


def _measure_batch(
    model: Any, packed: Any, x: np.ndarray, repeat: int, samples_per_loop: int
) -> dict[str, Any]:
    from service.rpc import convert
    from service.rpc.api import aeguard_pb2 as pb

    n = len(x)
    batch = model.scorer.score(x)
    per_sample = pb.ScoreRequest(request_id="r")
    columnar = pb.ScoreRequest(request_id="r", columnar=True)
    per_sample_wire = convert.score_response(per_sample, model, batch).SerializeToString()
    columnar_wire = convert.score_response(columnar, model, batch).SerializeToString()

    def packed_repeated() -> bytes:
        return packed(
            scores=batch.score.tolist(),
            normalized_scores=batch.normalized_score.tolist(),
            is_anomaly=batch.is_anomaly.tolist(),
            severity=batch.severity_level.tolist(),
        ).SerializeToString()

    timings = {
        "score_us": lambda: model.scorer.score(x),
        "per_sample_server_us": lambda: convert.score_response(per_sample, model, batch).SerializeToString(),
        "per_sample_client_us": lambda: _read_per_sample(per_sample_wire),
        "columnar_server_us": lambda: convert.score_response(columnar, model, batch).SerializeToString(),
        "columnar_client_us": lambda: _read_columnar(columnar_wire),
        "packed_repeated_fill_us": packed_repeated,
    }
    row: dict[str, Any] = {"rows": n}
    row |= {name: _time_us(fn, n, repeat, samples_per_loop) for name, fn in timings.items()}
    row["per_sample_bytes"] = len(per_sample_wire)
    row["columnar_bytes"] = len(columnar_wire)
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'rows':>6} {'ORT score':>10} | {'per-sample srv':>14} {'cli':>9} {'bytes':>8} | "
        f"{'columnar srv':>12} {'cli':>7} {'bytes':>8} | {'packed fill':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['rows']:>6} {r['score_us']:>10.1f} | {r['per_sample_server_us']:>14.1f} "
            f"{r['per_sample_client_us']:>9.1f} {r['per_sample_bytes']:>8} | "
            f"{r['columnar_server_us']:>12.1f} {r['columnar_client_us']:>7.1f} {r['columnar_bytes']:>8} | "
            f"{r['packed_repeated_fill_us']:>11.1f}"
        )
    lines.append(
        "CPU microseconds per response, best of the repeats; srv = convert.score_response + "
        "SerializeToString, cli = parse + scores as numpy;\npacked fill = the four columns as packed "
        "repeated fields filled from numpy (the form ColumnarResults did not take)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.responses", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="model file (default: models/default.onnx, trained if missing)")
    p.add_argument("--batch-rows", default="1,64,4096", help="comma-separated batch sizes")
    p.add_argument("--repeat", type=int, default=5, help="timing loops per figure; the fastest is reported")
    args = p.parse_args(argv)
    try:
        sizes = [int(v) for v in args.batch_rows.split(",")]
    except ValueError:
        p.error(f"--batch-rows: expected comma-separated integers, got {args.batch_rows!r}")
    if not sizes or min(sizes) < 1 or args.repeat < 1:
        p.error("--batch-rows and --repeat must be positive")
    from bench.model import ensure_model

    try:
        model = ensure_model(args.model)
    except AeguardError as exc:
        print(f"bench: error: {exc.message}", file=sys.stderr)
        return 2
    print(format_table(measure(model, sizes, args.repeat)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
