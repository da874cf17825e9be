"""A range of history from Prometheus as one aligned table: what `aeguard train --prometheus` learns from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from service.watch.align import Table, align
from service.watch.prometheus import PrometheusClient, SeriesSet


def fetch_history(
    client: PrometheusClient,
    queries: Mapping[str, str],
    start: float,
    end: float,
    step_s: float,
    group_by: Sequence[str],
) -> Table:
    """Run every query over ``[start, end]`` at ``step_s`` and align the results (see :func:`align`)."""
    results: dict[str, SeriesSet] = {}
    for name, promql in queries.items():
        results[name] = client.query_range(promql, start, end, step_s)
    return align(results, group_by)
