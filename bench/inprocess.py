"""The compute-limit baseline: the same model scored in-process with ``service.scorer.Scorer``.

No network, no protobuf: a thread calls ``Scorer.score`` in a loop on a prepared batch. With
several threads (onnxruntime releases the GIL while it runs the graph) it shows what the
machine's cores can score at most, which no server can beat.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from service.scorer import Scorer


@dataclass
class InProcessResult:
    """Calls and their latencies inside the measured window, over all threads."""

    requests: int = 0
    samples: int = 0
    latencies_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0


def measure_in_process(
    scorer: Scorer, *, rows: int, threads: int, duration_s: float, warmup_s: float = 0.3
) -> InProcessResult:
    """Score ``rows``-row batches from ``threads`` threads for ``duration_s`` after a warm-up."""
    x = np.random.default_rng(0).normal(size=(rows, scorer.metadata.n_features)).astype(np.float32)
    start = time.perf_counter() + warmup_s
    end = start + duration_s
    per_thread = [InProcessResult() for _ in range(threads)]

    def loop(res: InProcessResult) -> None:
        while (t0 := time.perf_counter()) < end:
            scorer.score(x)
            t1 = time.perf_counter()
            if start <= t1 <= end:
                res.requests += 1
                res.samples += rows
                res.latencies_s.append(t1 - t0)

    workers = [threading.Thread(target=loop, args=(r,), daemon=True) for r in per_thread]
    for w in workers:
        w.start()
    time.sleep(max(0.0, start - time.perf_counter()))
    cpu0 = time.process_time()
    time.sleep(max(0.0, end - time.perf_counter()))
    cpu1 = time.process_time()
    for w in workers:
        w.join()
    total = InProcessResult(cpu_s=cpu1 - cpu0)
    for r in per_thread:
        total.requests += r.requests
        total.samples += r.samples
        total.latencies_s.extend(r.latencies_s)
    return total
