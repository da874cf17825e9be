"""The benchmark's load generator: client processes that drive a gRPC server and time every call.

Each client process runs grpc.aio with a fixed number of calls in flight, so one process can keep
many requests outstanding without a thread per request. Requests are serialized once, up front,
and sent as bytes (:mod:`bench.wire`), so the same generator drives aeguard, the no-op
servers and MLServer's V2 protocol at the same client cost. Each process opens several channels
(separate TCP connections: a server's ``SO_REUSEPORT`` workers are balanced per connection, not
per call) and spreads its calls over them round-robin. Processes are started once and reused for
every measurement; they all measure the same wall-clock window, so their counts add up.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing as mp
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from bench import wire

#: Deadline of one call, and the bound on waiting for a client process.
CALL_TIMEOUT_S = 30.0
#: Channels (TCP connections) per client process, by default. The kernel hashes each connection to
#: one of the server's SO_REUSEPORT workers: with 2 client processes, 16 connections leave a 2-worker
#: server split 12/4 or worse in about 8 % of cells (8 connections: about 29 %).
DEFAULT_CHANNELS = 8


@dataclass(frozen=True)
class LoadSpec:
    """One client process's share of one measurement."""

    target: str  #: host:port of the server under test
    method: str  #: "Score" (unary) or "ScoreStream" (bidirectional streams, pipelined)
    rows: int  #: samples per request
    n_features: int  #: features per sample
    in_flight: int  #: calls (Score) or pipelined requests (ScoreStream) outstanding at once
    start_at: float  #: wall-clock time (time.time()) the measured window opens; before it: warm-up
    duration_s: float  #: length of the measured window
    max_message_bytes: int = 64 * 1024 * 1024
    protocol: str = "aeguard"  #: "aeguard" (aeguard and the no-op servers) or "v2" (MLServer, unary only)
    model: str = ""  #: model name (required by the V2 protocol; aeguard: empty = default model)
    channels: int = DEFAULT_CHANNELS  #: channels (connections) this process spreads its calls over
    keep_latencies: bool = True  #: False for long runs (the soak): counts only
    columnar: bool = False  #: ask for ScoreResponse.columns (packed columns) instead of per-sample results
    tls_ca: str = ""  #: PEM file: speak TLS, checking the server's certificate against it
    token: str = ""  #: bearer token sent as ``authorization`` metadata on every call


@dataclass
class LoadResult:
    """What one client process saw inside the measured window."""

    requests: int = 0
    samples: int = 0
    errors: int = 0
    first_error: str = ""
    latencies_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0  #: this process's CPU time inside the window
    late_s: float = 0.0  #: how late the process was ready (> 0 means its warm-up was cut short)


#: What a client process is given: one spec, or several run together on one event loop (the soak).
Job = LoadSpec | tuple[LoadSpec, ...]


def request_bytes(spec: LoadSpec, seed: int) -> bytes:
    """The serialized request every call of ``spec`` sends."""
    x = wire.sample_rows(spec.rows, spec.n_features, seed)
    if spec.protocol == "v2":
        return wire.v2_request(x, spec.model)
    return wire.aeguard_request(x, columnar=spec.columnar)


def method_path(spec: LoadSpec) -> str:
    if spec.protocol == "v2":
        if spec.method != "Score":
            raise ValueError("the V2 protocol is measured with unary calls only")
        return wire.V2_MODEL_INFER
    return wire.AEGUARD_SCORE if spec.method == "Score" else wire.AEGUARD_SCORE_STREAM


class _Window:
    """The measured window in perf_counter time, plus the process's CPU time across it."""

    def __init__(self, spec: LoadSpec) -> None:
        offset = time.time() - time.perf_counter()
        self.start = spec.start_at - offset
        self.end = self.start + spec.duration_s
        self.cpu_start = self.cpu_end = 0.0

    def inside(self, t: float) -> bool:
        return self.start <= t <= self.end

    async def track_cpu(self) -> None:
        await asyncio.sleep(max(0.0, self.start - time.perf_counter()))
        self.cpu_start = time.process_time()
        await asyncio.sleep(max(0.0, self.end - time.perf_counter()))
        self.cpu_end = time.process_time()


def _channel_options(spec: LoadSpec, index: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", spec.max_message_bytes),
        ("grpc.max_send_message_length", spec.max_message_bytes),
        # Without these, grpc shares one connection between channels to the same target.
        ("grpc.use_local_subchannel_pool", 1),
        ("aeguard.bench.channel", index),
    ]


def _record(result: LoadResult, spec: LoadSpec, window: _Window, t0: float, t1: float) -> None:
    if window.inside(t1):
        result.requests += 1
        result.samples += spec.rows
        if spec.keep_latencies:
            result.latencies_s.append(t1 - t0)


async def _unary(
    channels: list[Any], request: bytes, spec: LoadSpec, window: _Window, result: LoadResult
) -> None:
    import grpc

    path = method_path(spec)
    metadata = _metadata(spec)
    # Round-robin per call, so every connection carries calls even with few in flight.
    calls = itertools.cycle([ch.unary_unary(path) for ch in channels])

    async def one_caller() -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= window.end:
                return
            try:
                await next(calls)(request, timeout=CALL_TIMEOUT_S, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                result.errors += 1
                result.first_error = result.first_error or f"{exc.code().name}: {exc.details()}"
                continue
            _record(result, spec, window, t0, time.perf_counter())

    await asyncio.gather(*(one_caller() for _ in range(spec.in_flight)))


async def _one_stream(
    channel: Any, in_flight: int, request: bytes, spec: LoadSpec, window: _Window, result: LoadResult
) -> None:
    slots = asyncio.Semaphore(in_flight)
    sent: deque[float] = deque()
    call = channel.stream_stream(method_path(spec))(timeout=None, metadata=_metadata(spec))

    async def writer() -> None:
        while time.perf_counter() < window.end:
            await slots.acquire()
            sent.append(time.perf_counter())
            await call.write(request)
        await call.done_writing()

    async def reader() -> None:
        async for response in call:
            t1 = time.perf_counter()
            t0 = sent.popleft()
            slots.release()
            error = wire.stream_error(response)
            if error is not None:
                result.errors += 1
                result.first_error = result.first_error or error
            else:
                _record(result, spec, window, t0, t1)

    await asyncio.gather(writer(), reader())


async def _stream(
    channels: list[Any], request: bytes, spec: LoadSpec, window: _Window, result: LoadResult
) -> None:
    """One stream per channel (up to ``in_flight``), the pipelined requests split among them."""
    shares = split(spec.in_flight, len(channels))
    await asyncio.gather(
        *(_one_stream(ch, n, request, spec, window, result) for ch, n in zip(channels, shares, strict=False))
    )


def _channel(spec: LoadSpec, index: int) -> Any:
    """One channel: plaintext, or TLS checked against ``spec.tls_ca``."""
    import grpc

    options = _channel_options(spec, index)
    if spec.tls_ca:
        with open(spec.tls_ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        return grpc.aio.secure_channel(spec.target, creds, options=options)
    return grpc.aio.insecure_channel(spec.target, options=options)


def _metadata(spec: LoadSpec) -> tuple[tuple[str, str], ...] | None:
    """The bearer token every call carries, if any."""
    return (("authorization", f"Bearer {spec.token}"),) if spec.token else None


async def _drive(spec: LoadSpec, seed: int) -> LoadResult:
    import grpc

    result = LoadResult()
    window = _Window(spec)
    request = request_bytes(spec, seed)
    channels = [_channel(spec, i) for i in range(max(1, spec.channels))]
    try:
        await asyncio.wait_for(
            asyncio.gather(*(ch.channel_ready() for ch in channels)), timeout=CALL_TIMEOUT_S
        )
        result.late_s = max(0.0, time.perf_counter() - window.start)
        drive = _unary if spec.method == "Score" else _stream
        try:
            await asyncio.gather(window.track_cpu(), drive(channels, request, spec, window, result))
        except grpc.aio.AioRpcError as exc:  # a failed stream ends its measurement
            result.errors += 1
            result.first_error = result.first_error or f"{exc.code().name}: {exc.details()}"
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
    result.cpu_s = window.cpu_end - window.cpu_start
    return result


async def _run(job: Job, seed: int) -> LoadResult | list[LoadResult]:
    if isinstance(job, LoadSpec):
        return await _drive(job, seed)
    return list(await asyncio.gather(*(_drive(spec, seed + 1000 * i) for i, spec in enumerate(job))))


def _worker(index: int, inbox: mp.Queue, outbox: mp.Queue) -> None:
    """A client process: run each job it receives, answer with its result, stop on None."""
    while (job := inbox.get()) is not None:
        try:
            outbox.put((index, asyncio.run(_run(job, seed=index))))
        except Exception as exc:  # reported to the parent, which fails the benchmark with it
            outbox.put((index, RuntimeError(f"client process {index}: {type(exc).__name__}: {exc}")))


class ClientPool:
    """A fixed set of client processes (spawned, so they share nothing with the parent)."""

    def __init__(self, processes: int) -> None:
        ctx = mp.get_context("spawn")
        self._outbox: mp.Queue = ctx.Queue()
        self._inboxes: list[mp.Queue] = [ctx.Queue() for _ in range(processes)]
        self._procs = [
            ctx.Process(
                target=_worker, args=(i, q, self._outbox), daemon=True, name=f"aeguard-bench-client-{i}"
            )
            for i, q in enumerate(self._inboxes)
        ]
        for p in self._procs:
            p.start()

    @property
    def size(self) -> int:
        return len(self._procs)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def submit(self, jobs: list[Job]) -> None:
        """Give job i to process i (``len(jobs) <= size``); :meth:`collect` gathers the results."""
        if len(jobs) > self.size:
            raise ValueError(f"{len(jobs)} jobs for {self.size} client processes")
        for inbox, job in zip(self._inboxes, jobs, strict=False):
            inbox.put(job)

    def collect(self, count: int, timeout_s: float) -> list[LoadResult]:
        """Wait for ``count`` results, in process order, flattened (a tuple job gives one result per
        spec); re-raise a client process's failure."""
        results: dict[int, LoadResult | list[LoadResult]] = {}
        for _ in range(count):
            index, res = self._outbox.get(timeout=timeout_s)
            if isinstance(res, Exception):
                raise res
            results[index] = res
        flat: list[LoadResult] = []
        for i in sorted(results):
            res = results[i]
            flat.extend(res if isinstance(res, list) else [res])
        return flat

    def close(self) -> None:
        for inbox in self._inboxes:
            inbox.put(None)
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()


def split(total: int, parts: int) -> list[int]:
    """Split ``total`` calls in flight over at most ``parts`` processes, as evenly as possible."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
