"""Push a batch job's metrics to a Prometheus Pushgateway, the standard home of batch-job metrics.

The metrics are defined in :mod:`service.metrics.batch`; they go under job ``aeguard_batch``.
A successful run replaces the job's group. A failed run (which wrote nothing) updates only the
duration, so rows, anomalies and the last-success timestamp keep describing the last good run: the
timestamp is what a "batch job has not succeeded lately" alert watches.
"""

from __future__ import annotations

import logging

from prometheus_client import push_to_gateway, pushadd_to_gateway

from service.batch.summary import Summary
from service.errors import AeguardError
from service.metrics.batch import batch_job_registry

log = logging.getLogger(__name__)

JOB = "aeguard_batch"


def push_metrics(url: str, summary: Summary | None, duration_s: float, timeout_s: float = 10.0) -> None:
    """Push a run's metrics to ``url`` (``summary`` None: the run failed).

    Raise :class:`AeguardError` if the gateway cannot be reached.
    """
    registry = batch_job_registry(summary, duration_s)
    # PUT replaces the job's whole group; POST (pushadd) replaces only the metrics it sends.
    push = push_to_gateway if summary is not None else pushadd_to_gateway
    try:
        push(url, job=JOB, registry=registry, timeout=timeout_s)
    except OSError as exc:
        raise AeguardError(f"cannot push metrics to the Pushgateway at {url}: {exc}") from exc
    log.info("pushed job metrics to %s (job=%s)", url, JOB)
