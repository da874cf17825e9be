"""One burst of large requests against a running server, and whether its workers' memory comes back.

Used by `make soak` after its mixed load: the server's worker processes' resident memory (VmRSS,
summed) is read at rest, then ``clients`` threads (each on its own channel, so the calls spread over
the workers) send ``rounds`` Score calls each of the largest batch the server accepts
(``max_batch_rows`` rows, with per-feature errors in the answers), then the memory is read every
``sample_s`` for up to ``settle_s``. It has come back when it is within :data:`RETURN_WITHIN` of
its level before the burst.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from bench import procs
from service.config import ServerConfig
from service.rpc.api import aeguard_pb2 as pb
from service.rpc.api import aeguard_pb2_grpc as pb_grpc

#: Memory after the burst must come back within this share of its level before it.
RETURN_WITHIN = 0.20


@dataclass
class BurstResult:
    rows: int
    request_mb: float
    calls: int
    errors: dict[str, int]
    before_mb: float
    peak_mb: float
    after_mb: float
    settled_after_s: float | None  #: None: not back within RETURN_WITHIN by the end of the wait

    @property
    def returned(self) -> bool:
        return self.settled_after_s is not None

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "returned": self.returned}


def workers_rss_mb(root: int) -> float:
    """The summed VmRSS of ``root``'s descendants (the workers; the supervisor itself left out)."""
    return sum(procs.rss_mb(pid) or 0.0 for pid in procs.tree_pids(root) if pid != root)


def run_burst(
    target: str,
    server_pid: int,
    n_features: int,
    *,
    clients: int = 8,
    rounds: int = 3,
    settle_s: float = 20.0,
    sample_s: float = 0.5,
    rows: int = 0,
) -> BurstResult:
    """Send the burst and watch the workers' memory come back (or not); ``rows`` per request
    (default: the largest batch the default settings accept)."""
    config = ServerConfig.from_sources({})
    rows = rows or config.max_batch_rows
    x = np.random.default_rng(0).normal(size=(rows, n_features)).astype(np.float32)
    request = pb.ScoreRequest(
        samples=pb.Matrix(rows=rows, cols=n_features, raw=x.tobytes()), feature_errors=False
    )
    limit = max(config.message_limit_bytes, 2 * request.ByteSize())
    options = [
        ("grpc.enable_http_proxy", 0),
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
    ]
    errors: dict[str, int] = {}
    lock = threading.Lock()
    before = workers_rss_mb(server_pid)
    peak = before

    def client() -> None:
        with grpc.insecure_channel(target, options=options) as ch:
            stub = pb_grpc.AnomalyDetectorStub(ch)
            for _ in range(rounds):
                try:
                    stub.Score(request, timeout=120)
                except grpc.RpcError as exc:
                    with lock:
                        errors[exc.code().name] = errors.get(exc.code().name, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, workers_rss_mb(server_pid))
        time.sleep(0.05)
    start = time.monotonic()
    after, settled = workers_rss_mb(server_pid), None
    while time.monotonic() - start < settle_s:
        after = workers_rss_mb(server_pid)
        if after <= before * (1 + RETURN_WITHIN):
            settled = round(time.monotonic() - start, 1)
            break
        time.sleep(sample_s)
    return BurstResult(
        rows=rows,
        request_mb=round(request.ByteSize() / 2**20, 1),
        calls=clients * rounds,
        errors=errors,
        before_mb=round(before, 1),
        peak_mb=round(peak, 1),
        after_mb=round(after, 1),
        settled_after_s=settled,
    )


def format_burst(r: BurstResult) -> str:
    errors = ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items())) or "none"
    back = f"back within {RETURN_WITHIN:.0%} after {r.settled_after_s} s" if r.returned else "NOT back"
    return (
        f"burst: {r.calls} Score calls of {r.rows} rows ({r.request_mb} MiB each), errors: {errors}; "
        f"workers' RSS {r.before_mb} MiB before, {r.peak_mb} peak, {r.after_mb} after: {back}"
    )
