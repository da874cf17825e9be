"""A batch job's metrics, for the Prometheus Pushgateway (:mod:`service.batch.pushgateway` pushes them).

Names follow the project's agreed list: ``aeguard_batch_rows_total``,
``aeguard_batch_anomalies_total{severity}``, ``aeguard_batch_duration_seconds`` and
``aeguard_batch_last_success_timestamp_seconds``. A failed run carries only the duration, so rows,
anomalies and the last-success timestamp keep describing the last good run.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from service.batch.summary import Summary


def batch_job_registry(summary: Summary | None, duration_s: float) -> CollectorRegistry:
    """The job's metrics on a fresh registry (never the global one); ``summary`` is None for a failed run."""
    registry = CollectorRegistry()
    Gauge(
        "aeguard_batch_duration_seconds",
        "Wall time of the last batch job run, failed or not.",
        registry=registry,
    ).set(duration_s)
    if summary is None:
        return registry
    rows = Counter(
        "aeguard_batch_rows", "Input rows the batch job read (scored or flagged).", registry=registry
    )
    rows.inc(summary.rows)
    anomalies = Counter(
        "aeguard_batch_anomalies",
        "Rows the batch job found anomalous, by severity.",
        ["severity"],
        registry=registry,
    )
    for severity, count in summary.anomalies.items():
        anomalies.labels(severity=severity).inc(count)
    Gauge(
        "aeguard_batch_last_success_timestamp_seconds",
        "Unix time at which the batch job last finished successfully.",
        registry=registry,
    ).set(time.time())
    return registry
