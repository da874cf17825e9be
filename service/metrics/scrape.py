"""What ``/metrics`` shows (drift computed at scrape time, retired series dropped), and its HTTP server."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.drift import psi
from service.metrics.serving import REFERENCE_SERIES, RETIRED, WINDOW_SERIES

#: (model_name, model_version) -> bin index -> value
_Bins = dict[tuple[str, str], dict[int, float]]


class ScrapeView(Collector):
    """What ``/metrics`` shows: the source's families, with drift computed and retired series dropped.

    ``sources`` are the process's own registry, or a registry holding a ``MultiProcessCollector``
    over every worker's files plus the supervisor's own registry. The window and reference bin
    series become one ``aeguard_score_drift_psi`` gauge per model version: the PSI of the summed
    windows (every worker's most recent scores) against the calibration shares, NaN below
    ``min_samples`` scores.
    """

    def __init__(
        self, sources: Sequence[Any], min_samples: int, before: Callable[[], None] | None = None
    ) -> None:
        self._sources = list(sources)
        self._min_samples = min_samples
        self._before = before

    def collect(self) -> Iterator[Metric]:
        if self._before is not None:
            self._before()
        window: _Bins = defaultdict(dict)
        reference: _Bins = defaultdict(dict)
        for family in (f for source in self._sources for f in source.collect()):
            if family.name in (WINDOW_SERIES, REFERENCE_SERIES):
                into = window if family.name == WINDOW_SERIES else reference
                for s in family.samples:
                    key = (s.labels["model_name"], s.labels["model_version"])
                    into[key][int(s.labels["bin"])] = s.value
                continue
            family.samples = [s for s in family.samples if not _retired(family.name, s.value)]
            yield family
        yield self._drift(window, reference)

    def _drift(
        self,
        window: dict[tuple[str, str], dict[int, float]],
        reference: dict[tuple[str, str], dict[int, float]],
    ) -> GaugeMetricFamily:
        gauge = GaugeMetricFamily(
            "aeguard_score_drift_psi",
            "PSI of the recent score window (every worker's most recent scores together) vs the "
            "model's calibration score distribution (0 = none, > 0.2 significant; NaN until the "
            "window has enough scores).",
            labels=["model_name", "model_version"],
        )
        for key, shares in sorted(reference.items()):
            if not shares or any(v == RETIRED for v in shares.values()):
                continue
            bins = range(max(shares) + 1)
            expected = np.array([shares.get(i, 0.0) for i in bins])
            counts = np.array([window.get(key, {}).get(i, 0.0) for i in bins])
            total = counts.sum()
            value = math.nan if total < max(self._min_samples, 1) else psi(counts / total, expected)
            gauge.add_metric(list(key), value)
        return gauge


def _retired(name: str, value: float) -> bool:
    if name == "aeguard_model_info":
        return value == 0
    return value == RETIRED


def scrape_registry(view: ScrapeView) -> CollectorRegistry:
    """A registry holding only ``view``, for the HTTP endpoint."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(view)
    return registry


def serve_http(registry: CollectorRegistry, host: str, port: int) -> tuple[Any, int]:
    """Start the /metrics HTTP server in a daemon thread; return it and its bound port."""
    httpd, _thread = start_http_server(port, addr=host, registry=registry)
    return httpd, int(httpd.server_port)
