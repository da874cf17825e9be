"""A no-op ``aeguard.v1.AnomalyDetector`` server: the gRPC transport floor for the benchmark.

It speaks the same messages as aeguard and answers ``Score`` / ``ScoreStream`` with a
``ScoreResponse`` of the right size (one result per sample, or the columns when the request asks
for them; typical field values) without scoring anything, so the difference to aeguard is what
scoring, validation and metrics cost.
Run it as ``python -m bench.noop --port 0``; it prints ``port=N`` once it listens.

Two forms, one process each: grpcio's synchronous server on a thread pool (the default), and with
``--aio`` a ``grpc.aio`` server whose handlers are coroutines on one event loop, like aeguard's.
The benchmark compares aeguard with the faster of the two in each round.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc

from service.rpc.api import aeguard_pb2 as pb
from service.rpc.api import aeguard_pb2_grpc as pb_grpc


class NoopDetector(pb_grpc.AnomalyDetectorServicer):
    """Answers every scoring request with a canned response holding one result per sample."""

    def __init__(self, model_name: str, model_version: str) -> None:
        self._model_name = model_name
        self._model_version = model_version
        self._by_rows: dict[tuple[int, bool], pb.ScoreResponse] = {}
        self._lock = threading.Lock()

    def _response(self, request: pb.ScoreRequest) -> pb.ScoreResponse:
        rows = request.samples.rows if request.HasField("samples") else len(request.named)
        key = (rows, request.columnar)
        cached = self._by_rows.get(key)
        if cached is None:
            cached = pb.ScoreResponse(model=self._model_name, model_version=self._model_version)
            if request.columnar:  # the same shape aeguard sends: one column of each kind
                cached.columns.CopyFrom(
                    pb.ColumnarResults(
                        rows=rows,
                        scores=b"\1" * 4 * rows,
                        normalized_scores=b"\1" * 4 * rows,
                        is_anomaly=b"\0" * rows,
                        severity=b"\0" * 4 * rows,
                        severity_names=["none", "warning", "critical"],
                    )
                )
            else:
                # A below-threshold verdict with non-default values, so every field is on the wire.
                result = pb.SampleResult(
                    score=0.0123, normalized_score=0.4567, is_anomaly=False, severity="none"
                )
                cached.results.extend([result] * rows)
            with self._lock:
                self._by_rows[key] = cached
        if not request.request_id:
            return cached
        response = pb.ScoreResponse()
        response.CopyFrom(cached)
        response.request_id = request.request_id
        return response

    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:  # noqa: N802
        return self._response(request)

    def ScoreStream(  # noqa: N802
        self, request_iterator: Iterator[pb.ScoreRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ScoreResponse]:
        for request in request_iterator:
            yield self._response(request)


class AioNoopDetector(NoopDetector):
    """The same canned answers from coroutines, for a ``grpc.aio`` server."""

    async def Score(self, request: pb.ScoreRequest, context: Any) -> pb.ScoreResponse:  # type: ignore[override]  # noqa: N802
        return self._response(request)

    async def ScoreStream(  # type: ignore[override]  # noqa: N802
        self, request_iterator: AsyncIterator[pb.ScoreRequest], context: Any
    ) -> AsyncIterator[pb.ScoreResponse]:
        async for request in request_iterator:
            yield self._response(request)


def build_noop_server(
    host: str, port: int, *, workers: int, model_name: str, model_version: str, options: list[Any]
) -> tuple[grpc.Server, int]:
    """Start the no-op server; return it and its bound port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
    pb_grpc.add_AnomalyDetectorServicer_to_server(NoopDetector(model_name, model_version), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound


async def serve_aio(host: str, port: int, *, model_name: str, model_version: str, options: list[Any]) -> None:
    """Serve the no-op detector on ``grpc.aio`` until SIGTERM/SIGINT; prints ``port=N`` once listening."""
    server = grpc.aio.server(options=options)
    pb_grpc.add_AnomalyDetectorServicer_to_server(AioNoopDetector(model_name, model_version), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"port={bound}", flush=True)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.noop", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = an ephemeral port, printed")
    parser.add_argument("--workers", type=int, default=8, help="thread-pool size (sync server)")
    parser.add_argument("--aio", action="store_true", help="a grpc.aio server (no thread pool)")
    parser.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--model-name", default="noop")
    parser.add_argument("--model-version", default="0")
    args = parser.parse_args(argv)
    options = [
        ("grpc.max_receive_message_length", args.max_message_bytes),
        ("grpc.max_send_message_length", args.max_message_bytes),
    ]
    if args.aio:
        asyncio.run(
            serve_aio(
                args.host,
                args.port,
                model_name=args.model_name,
                model_version=args.model_version,
                options=options,
            )
        )
        return 0
    server, port = build_noop_server(
        args.host,
        args.port,
        workers=args.workers,
        model_name=args.model_name,
        model_version=args.model_version,
        options=options,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"port={port}", flush=True)
    stop.wait()
    server.stop(1.0).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
