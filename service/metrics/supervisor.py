"""The supervising parent's own series (``--processes N``), beside its workers' summed files."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass
class SupervisorMetrics:
    """The parent's own series, on its own (single-process) registry."""

    registry: CollectorRegistry
    processes: Gauge = field(init=False)
    restarts: Counter = field(init=False)

    def __post_init__(self) -> None:
        self.processes = Gauge(
            "aeguard_worker_processes", "Worker processes alive and serving.", registry=self.registry
        )
        self.restarts = Counter(
            "aeguard_worker_restarts",
            "Worker processes that died and were replaced.",
            ["reason"],
            registry=self.registry,
        )
