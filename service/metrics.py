"""Prometheus metric definitions for the server, on an explicit registry, and their HTTP endpoint.

Names follow the agreed list in the README ("## Metrics"): ``aeguard_`` prefix, base units,
histograms (not summaries), labels ``model_name``/``model_version``, no unbounded labels. Hot-path
updates go through pre-bound label children; the per-sample ``normalized_score`` histogram and the
drift gauge are custom collectors so a 4096-row batch costs one numpy pass, not 4096 calls.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from service.errors import ModelLoadError
from service.model_store import LoadedModel
from service.scorer import ScoreBatch

#: Around 1.0 (the anomaly boundary), so the distribution near the threshold is visible.
NORMALIZED_SCORE_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
#: RPC latency in seconds, from 100 µs (batch-1 on a warm model) to 10 s.
RPC_DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
#: Samples per request, powers of 4 up to beyond the default batch limit.
BATCH_SIZE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)


class _NumpyHistogram:
    """Cumulative-ready bucket counts updated with one numpy pass per batch."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self._bounds_list = list(bounds)
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # last = above every bound (+Inf)
        self.total = 0.0
        self._lock = threading.Lock()

    def observe(self, values: np.ndarray) -> None:
        if values.size == 1:
            v = float(values.flat[0])
            i = bisect.bisect_left(self._bounds_list, v)  # bucket "le" bound: v <= bound
            with self._lock:
                self.counts[i] += 1
                self.total += v
            return
        idx = np.searchsorted(self.bounds, values, side="left")
        add = np.bincount(idx, minlength=len(self.counts))
        s = float(values.sum(dtype=np.float64))
        with self._lock:
            self.counts += add
            self.total += s

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        with self._lock:
            cumulative = np.cumsum(self.counts)
            total = self.total
        les = [*(repr(float(b)) for b in self.bounds), "+Inf"]
        return [(le, float(c)) for le, c in zip(les, cumulative, strict=True)], total


@dataclass
class _ModelSeries:
    """Pre-bound series of one (model_name, model_version)."""

    samples: Any
    anomalies: list[Any]  # index = severity level (0 = none, unused)
    normalized: _NumpyHistogram
    drift: Any = None  # the served model's ScoreDrift
    labels: tuple[str, str] = ("", "")


class RpcSeries:
    """Pre-bound series of one RPC method."""

    def __init__(self, metrics: Metrics, method: str) -> None:
        self.method = method
        self.in_flight = metrics.rpc_in_flight.labels(method)
        self.duration = metrics.rpc_duration.labels(method)
        self._requests = metrics.rpc_requests
        self._by_code: dict[str, Any] = {}

    def finished(self, code: str) -> None:
        """Count one finished RPC with this status code name (e.g. ``OK``)."""
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._requests.labels(self.method, code)
        child.inc()


class Metrics:
    """Every server metric. Implements the model store's listener interface."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        mv = ["model_name", "model_version"]
        self.rpc_requests = Counter(
            "aeguard_rpc_requests",
            "Finished RPCs by method and gRPC status code.",
            ["method", "code"],
            registry=registry,
        )
        self.rpc_duration = Histogram(
            "aeguard_rpc_duration_seconds",
            "RPC latency in seconds (streams: per message).",
            ["method"],
            buckets=RPC_DURATION_BUCKETS,
            registry=registry,
        )
        self.rpc_in_flight = Gauge(
            "aeguard_rpc_in_flight", "RPCs being handled now.", ["method"], registry=registry
        )
        self.rpc_threads = Gauge(
            "aeguard_rpc_threads",
            "RPC threads (--workers); each in-flight RPC, an open stream included, holds one.",
            registry=registry,
        )
        self.samples_scored = Counter("aeguard_samples_scored", "Samples scored.", mv, registry=registry)
        self.anomalies = Counter(
            "aeguard_anomalies",
            "Scored samples whose severity is not 'none', by severity.",
            [*mv, "severity"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "aeguard_batch_size_samples",
            "Samples per request (streams: per message).",
            ["method"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.model_info = Gauge(
            "aeguard_model_info",
            "1 for each loaded model.",
            [*mv, "coding_size", "n_features"],
            registry=registry,
        )
        self.model_threshold = Gauge(
            "aeguard_model_threshold",
            "A model's alert threshold in raw score units.",
            [*mv, "threshold"],
            registry=registry,
        )
        self.model_load_duration = Gauge(
            "aeguard_model_load_duration_seconds",
            "Seconds the last successful load (validation and warm-up included) took.",
            ["model_name"],
            registry=registry,
        )
        self.model_load_failures = Counter(
            "aeguard_model_load_failures", "Model files refused (at start-up or reload).", registry=registry
        )
        self._series: dict[tuple[str, str], _ModelSeries] = {}
        self._series_lock = threading.Lock()
        registry.register(_ModelCollector(self))

    # -- request path -----------------------------------------------------------------------------
    def rpc(self, method: str) -> RpcSeries:
        """Pre-bound series for one method (call once per method and keep it)."""
        return RpcSeries(self, method)

    def observe_scores(self, model: LoadedModel, batch: ScoreBatch) -> None:
        """Count samples and anomalies, and feed the score histogram and the drift window."""
        series = self._series.get((model.name, model.version))
        if series is None:
            series = self._bind(model)
        n = batch.score.shape[0]
        series.samples.inc(n)
        levels = batch.severity_level
        if n == 1:
            level = int(levels[0])
            if level:
                series.anomalies[level].inc()
        elif batch.is_anomaly.any():
            for level, count in enumerate(np.bincount(levels, minlength=len(series.anomalies))):
                if level and count:
                    series.anomalies[level].inc(int(count))
        series.normalized.observe(batch.normalized_score)
        model.drift.add(batch.score)

    # -- store listener -----------------------------------------------------------------------------
    def model_loaded(self, model: LoadedModel) -> None:
        meta = model.metadata
        labels = (model.name, model.version)
        self.model_info.labels(*labels, str(meta.coding_size), str(meta.n_features)).set(1)
        for t in meta.thresholds:
            self.model_threshold.labels(*labels, t.name).set(t.value)
        if model.load_duration_s > 0:
            self.model_load_duration.labels(model.name).set(model.load_duration_s)
        self._bind(model)

    def model_unloaded(self, model: LoadedModel) -> None:
        meta = model.metadata
        labels = (model.name, model.version)
        with contextlib.suppress(KeyError):
            self.model_info.remove(*labels, str(meta.coding_size), str(meta.n_features))
        for t in meta.thresholds:
            with contextlib.suppress(KeyError):
                self.model_threshold.remove(*labels, t.name)
        with self._series_lock:
            series = self._series.get(labels)
            if series is not None and series.drift is model.drift:
                series.drift = None

    def model_load_failed(self, source: str, error: ModelLoadError) -> None:
        self.model_load_failures.inc()

    def _bind(self, model: LoadedModel) -> _ModelSeries:
        labels = (model.name, model.version)
        with self._series_lock:
            series = self._series.get(labels)
            if series is None:
                series = _ModelSeries(
                    samples=self.samples_scored.labels(*labels),
                    anomalies=[
                        None,
                        *(self.anomalies.labels(*labels, name) for name in model.severity_names[1:]),
                    ],
                    normalized=_NumpyHistogram(NORMALIZED_SCORE_BUCKETS),
                    labels=labels,
                )
                self._series[labels] = series
            series.drift = model.drift
            return series

    def series_snapshot(self) -> list[_ModelSeries]:
        with self._series_lock:
            return list(self._series.values())


class _ModelCollector(Collector):
    """``aeguard_normalized_score`` (histogram) and ``aeguard_score_drift_psi`` (gauge), per model."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        hist = HistogramMetricFamily(
            "aeguard_normalized_score",
            "Per-sample score / the model's lowest threshold (1.0 = anomaly boundary).",
            labels=["model_name", "model_version"],
        )
        drift = GaugeMetricFamily(
            "aeguard_score_drift_psi",
            "PSI of the recent score window vs the model's calibration score distribution "
            "(0 = none, > 0.2 significant; NaN until the window has enough scores).",
            labels=["model_name", "model_version"],
        )
        for series in self._metrics.series_snapshot():
            buckets, total = series.normalized.snapshot()
            hist.add_metric(list(series.labels), buckets, total)
            if series.drift is not None:
                drift.add_metric(list(series.labels), series.drift.value())
        yield hist
        yield drift


def serve_http(registry: CollectorRegistry, host: str, port: int) -> tuple[Any, int]:
    """Start the /metrics HTTP server in a daemon thread; return it and its bound port."""
    httpd, _thread = start_http_server(port, addr=host, registry=registry)
    return httpd, int(httpd.server_port)
