"""The benchmark's load generator: client processes that drive a gRPC server and time every call.

Each client process runs grpc.aio with a fixed number of calls in flight, so one process can keep
many requests outstanding without a thread per request. Processes are started once and reused
for every measurement; they all measure the same wall-clock window, so their counts add up.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Deadline of one call, and the bound on waiting for a client process.
CALL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class LoadSpec:
    """One client process's share of one measurement."""

    target: str  #: host:port of the server under test
    method: str  #: "Score" (unary) or "ScoreStream" (one bidirectional stream, pipelined)
    rows: int  #: samples per request
    n_features: int  #: features per sample
    in_flight: int  #: calls (Score) or pipelined requests (ScoreStream) outstanding at once
    start_at: float  #: wall-clock time (time.time()) the measured window opens; before it: warm-up
    duration_s: float  #: length of the measured window
    max_message_bytes: int = 64 * 1024 * 1024
    columnar: bool = False  #: ask for ScoreResponse.columns (packed columns) instead of per-sample results


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


def _request(pb: Any, spec: LoadSpec, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(spec.rows, spec.n_features)).astype("<f4")
    samples = pb.Matrix(rows=spec.rows, cols=spec.n_features, raw=x.tobytes())
    return pb.ScoreRequest(samples=samples, columnar=spec.columnar)


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


async def _unary(stub: Any, request: Any, spec: LoadSpec, window: _Window, result: LoadResult) -> None:
    import grpc

    async def one_caller() -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= window.end:
                return
            try:
                await stub.Score(request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                result.errors += 1
                result.first_error = result.first_error or f"{exc.code().name}: {exc.details()}"
                continue
            t1 = time.perf_counter()
            if window.inside(t1):
                result.requests += 1
                result.samples += spec.rows
                result.latencies_s.append(t1 - t0)

    await asyncio.gather(*(one_caller() for _ in range(spec.in_flight)))


async def _stream(stub: Any, request: Any, spec: LoadSpec, window: _Window, result: LoadResult) -> None:
    slots = asyncio.Semaphore(spec.in_flight)
    sent: deque[float] = deque()
    call = stub.ScoreStream(timeout=None)

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
            if response.HasField("error"):
                result.errors += 1
                result.first_error = result.first_error or f"{response.error.code}: {response.error.message}"
            elif window.inside(t1):
                result.requests += 1
                result.samples += spec.rows
                result.latencies_s.append(t1 - t0)

    await asyncio.gather(writer(), reader())


async def _run(spec: LoadSpec, seed: int) -> LoadResult:
    import grpc

    from service.rpc.api import aeguard_pb2 as pb
    from service.rpc.api import aeguard_pb2_grpc as pb_grpc

    result = LoadResult()
    window = _Window(spec)
    options = [
        ("grpc.max_receive_message_length", spec.max_message_bytes),
        ("grpc.max_send_message_length", spec.max_message_bytes),
    ]
    async with grpc.aio.insecure_channel(spec.target, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=CALL_TIMEOUT_S)
        result.late_s = max(0.0, time.perf_counter() - window.start)
        stub = pb_grpc.AnomalyDetectorStub(channel)
        request = _request(pb, spec, seed)
        drive = _unary if spec.method == "Score" else _stream
        try:
            await asyncio.gather(window.track_cpu(), drive(stub, request, spec, window, result))
        except grpc.aio.AioRpcError as exc:  # a failed stream ends its measurement
            result.errors += 1
            result.first_error = result.first_error or f"{exc.code().name}: {exc.details()}"
    result.cpu_s = window.cpu_end - window.cpu_start
    return result


def _worker(index: int, inbox: mp.Queue, outbox: mp.Queue) -> None:
    """A client process: run each spec it receives, answer with its result, stop on None."""
    while (spec := inbox.get()) is not None:
        try:
            outbox.put((index, asyncio.run(_run(spec, seed=index))))
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

    def submit(self, specs: list[LoadSpec]) -> None:
        """Give spec i to process i (``len(specs) <= size``); :meth:`collect` gathers the results."""
        if len(specs) > self.size:
            raise ValueError(f"{len(specs)} specs for {self.size} client processes")
        for inbox, spec in zip(self._inboxes, specs, strict=False):
            inbox.put(spec)

    def collect(self, count: int, timeout_s: float) -> list[LoadResult]:
        """Wait for ``count`` results, in process order; re-raise a client process's failure."""
        results: dict[int, LoadResult] = {}
        for _ in range(count):
            index, res = self._outbox.get(timeout=timeout_s)
            if isinstance(res, Exception):
                raise res
            results[index] = res
        return [results[i] for i in sorted(results)]

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


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3, the state, comes first)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process and its live descendants have used so far (Linux /proc).

    Descendants count because ``aeguard serve --processes N`` scores in worker processes under a
    supervisor; the supervisor's own CPU would miss nearly all of it. A worker that exits between
    two readings takes its CPU with it, so a delta is right only while the workers live.
    """
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = _stat(int(entry))
            except OSError:  # gone since listdir
                continue
            parent[int(entry)] = int(fields[1])
            ticks[int(entry)] = int(fields[11]) + int(fields[12])
    if pid not in ticks:
        fields = _stat(pid)  # raises for a process that does not exist, as before
        ticks[pid] = int(fields[11]) + int(fields[12])
    tree, frontier = {pid}, {pid}
    while frontier:
        frontier = {c for c, p in parent.items() if p in frontier and c not in tree}
        tree |= frontier
    return sum(ticks.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")
