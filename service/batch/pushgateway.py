"""Push a batch job's metrics to a Prometheus Pushgateway, the standard home of batch-job metrics.

Names follow the project's agreed list: ``aeguard_batch_rows_total``,
``aeguard_batch_anomalies_total{severity}``, ``aeguard_batch_duration_seconds`` and
``aeguard_batch_last_success_timestamp_seconds``, under job ``aeguard_batch``. A successful run
replaces the job's group. A failed run (which wrote nothing) updates only the duration, so rows,
anomalies and the last-success timestamp keep describing the last good run: the timestamp is what
a "batch job has not succeeded lately" alert watches.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway, pushadd_to_gateway

from service.batch.summary import Summary
from service.errors import AeguardError

log = logging.getLogger(__name__)

JOB = "aeguard_batch"


def build_registry(summary: Summary | None, duration_s: float) -> CollectorRegistry:
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


def push_metrics(url: str, summary: Summary | None, duration_s: float, timeout_s: float = 10.0) -> None:
    """Push a run's metrics to ``url`` (``summary`` None: the run failed).

    Raise :class:`AeguardError` if the gateway cannot be reached.
    """
    registry = build_registry(summary, duration_s)
    # PUT replaces the job's whole group; POST (pushadd) replaces only the metrics it sends.
    push = push_to_gateway if summary is not None else pushadd_to_gateway
    try:
        push(url, job=JOB, registry=registry, timeout=timeout_s)
    except OSError as exc:
        raise AeguardError(f"cannot push metrics to the Pushgateway at {url}: {exc}") from exc
    log.info("pushed job metrics to %s (job=%s)", url, JOB)
