"""The metrics of one serving process (``--processes 1``, or one worker), on an explicit registry.

Names follow docs (Metrics): ``aeguard_`` prefix, base units, histograms (not summaries), labels
``model_name``/``model_version``, no unbounded labels. Hot-path updates go through pre-bound label
children; a 4096-row batch updates the ``normalized_score`` histogram with one numpy pass.

Every metric works in prometheus-client's multiprocess mode, where each worker process writes its
values to files under ``PROMETHEUS_MULTIPROC_DIR`` and the supervisor's ``/metrics`` adds them up.
How each gauge aggregates across workers is stated in its help text (``multiprocess_mode``).
Custom collectors cannot run inside workers in that mode, so score drift is published as window
bin counts (:meth:`Metrics.publish_drift`) and turned into a PSI at scrape time
(:class:`service.metrics.scrape.ScrapeView`).
"""

from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
#: The labels of every per-model series.
MODEL_LABELS = ("model_name", "model_version")
#: Internal series from which the scrape computes ``aeguard_score_drift_psi``; never exposed.
WINDOW_SERIES = "aeguard_score_window_samples"
REFERENCE_SERIES = "aeguard_score_reference_share"
#: The variable that puts prometheus-client into multiprocess mode (set by the supervisor).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: A retired model version's last-value gauges are set to this: the scrape drops such samples.
RETIRED = -math.inf
#: ``reason`` values of ``aeguard_rpc_refusals`` (the limits of :mod:`service.rpc.limits`).
REFUSAL_REASONS = ("concurrent_rpcs", "open_streams", "inflight_bytes", "message_size")


def observe_many(child: Any, bounds: list[float], values: np.ndarray) -> None:
    """Add many observations to one prometheus-client Histogram child with one numpy pass.

    prometheus-client has no bulk ``observe``; per-value calls cost ~1 µs each (4 ms for 4096 rows).
    This adds each bucket's count and the sum directly to the child's value objects (``_buckets``
    are per-bucket, not cumulative, exactly as ``Histogram.observe`` keeps them). It relies on those
    two attributes; ``tests/test_metrics.py`` checks the result against per-value ``observe`` so a
    prometheus-client upgrade that changes them fails loudly.
    """
    if values.size == 1:
        v = float(values.flat[0])
        child._sum.inc(v)
        child._buckets[bisect.bisect_left(bounds, v)].inc(1)
        return
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds) + 1)
    child._sum.inc(float(values.sum(dtype=np.float64)))
    for i in np.flatnonzero(counts):
        child._buckets[i].inc(int(counts[i]))


@dataclass
class _ModelSeries:
    """Pre-bound series of one (model_name, model_version)."""

    samples: Any
    anomalies: list[Any]  # index = severity level (0 = none, unused)
    normalized: Any
    model: LoadedModel


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
    """Every metric of one serving process. Implements the model store's listener interface."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._define_rpc_series(registry)
        self._define_score_series(registry)
        self._define_model_series(registry)
        self._define_drift_series(registry)
        for result in ("ok", "failed"):  # exposed at 0 from the start, so increase() sees the first one
            self.model_reloads.labels(result)
        self._series: dict[tuple[str, str], _ModelSeries] = {}
        self._series_lock = threading.Lock()
        self._bounds = list(NORMALIZED_SCORE_BUCKETS)

    def _define_rpc_series(self, registry: CollectorRegistry) -> None:
        self.rpc_requests = Counter(
            "aeguard_rpc_requests",
            "Finished RPCs by method and gRPC status code (summed over worker processes).",
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
            "aeguard_rpc_in_flight",
            "RPCs being handled now, open streams included (summed over live worker processes).",
            ["method"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.batch_size = Histogram(
            "aeguard_batch_size_samples",
            "Samples per request (streams: per message).",
            ["method"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.auth_failures = Counter(
            "aeguard_auth_failures",
            "Calls refused for a missing or invalid bearer token (reason: missing, invalid).",
            ["reason"],
            registry=registry,
        )
        self.stream_errors = Counter(
            "aeguard_stream_errors",
            "ScoreStream requests answered with an `error` (the stream went on), by gRPC status code "
            "(the stream itself is counted once, in aeguard_rpc_requests).",
            ["code"],
            registry=registry,
        )
        self.stream_series = Gauge(
            "aeguard_stream_series",
            "Series whose last rows open ScoreStreams keep for a windowed model (freed when a stream "
            "ends; summed over live workers).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.rpc_refusals = Counter(
            "aeguard_rpc_refusals",
            "Calls refused with RESOURCE_EXHAUSTED by a limit (reason: concurrent_rpcs, open_streams, "
            "inflight_bytes, message_size); also counted in aeguard_rpc_requests under their method.",
            ["reason"],
            registry=registry,
        )
        for reason in REFUSAL_REASONS:  # exposed at 0 from the start
            self.rpc_refusals.labels(reason)

    def _define_score_series(self, registry: CollectorRegistry) -> None:
        mv = MODEL_LABELS
        self.samples_scored = Counter("aeguard_samples_scored", "Samples scored.", mv, registry=registry)
        self.anomalies = Counter(
            "aeguard_anomalies",
            "Scored samples whose severity is not 'none', by severity.",
            [*mv, "severity"],
            registry=registry,
        )
        self.normalized_score = Histogram(
            "aeguard_normalized_score",
            "Per-sample score / the model's lowest threshold (1.0 = anomaly boundary).",
            mv,
            buckets=NORMALIZED_SCORE_BUCKETS,
            registry=registry,
        )

    def _define_model_series(self, registry: CollectorRegistry) -> None:
        mv = MODEL_LABELS
        self.model_info = Gauge(
            "aeguard_model_info",
            "1 for each loaded model; with several worker processes, one series per worker (label pid), "
            "so a roll-over shows which version each one serves.",
            [*mv, "coding_size", "n_features"],
            registry=registry,
            multiprocess_mode="liveall",
        )
        self.model_threshold = Gauge(
            "aeguard_model_threshold",
            "A model's alert threshold in raw score units (the same in every worker that serves it).",
            [*mv, "threshold"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.model_load_duration = Gauge(
            "aeguard_model_load_duration_seconds",
            "Seconds the last successful load (validation and warm-up included) took "
            "(the slowest live worker).",
            ["model_name"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.model_reloads = Counter(
            "aeguard_model_reloads",
            "Model files swapped in (result ok) or refused (result failed) while serving; every worker "
            "reloads, so one changed file counts once per worker process.",
            ["result"],
            registry=registry,
        )

    def _define_drift_series(self, registry: CollectorRegistry) -> None:
        mv = MODEL_LABELS
        self.score_window = Gauge(
            WINDOW_SERIES,
            "Internal: recent scores per drift bin (summed over live workers); the scrape turns it "
            "into aeguard_score_drift_psi.",
            [*mv, "bin"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.score_reference = Gauge(
            REFERENCE_SERIES,
            "Internal: the calibration share of each drift bin.",
            [*mv, "bin"],
            registry=registry,
            multiprocess_mode="livemax",
        )

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
        observe_many(series.normalized, self._bounds, batch.normalized_score)
        model.drift.add(batch.score)

    def publish_drift(self) -> None:
        """Write each served model's drift-window bin counts into the (multiprocess) gauges."""
        for series in self.series_snapshot():
            model = series.model
            counts = model.drift.counts()
            for i, count in enumerate(counts):
                self.score_window.labels(model.name, model.version, str(i)).set(float(count))

    # -- store listener -----------------------------------------------------------------------------
    def model_loaded(self, model: LoadedModel) -> None:
        meta = model.metadata
        labels = (model.name, model.version)
        self.model_info.labels(*labels, str(meta.coding_size), str(meta.n_features)).set(1)
        for t in meta.thresholds:
            self.model_threshold.labels(*labels, t.name).set(t.value)
        if model.load_duration_s > 0:
            self.model_load_duration.labels(model.name).set(model.load_duration_s)
        for i, share in enumerate(model.drift.expected):
            self.score_reference.labels(*labels, str(i)).set(float(share))
        self._bind(model)

    def model_unloaded(self, model: LoadedModel) -> None:
        # Multiprocess files cannot forget a series, so a retired version's gauges are marked and
        # the scrape drops them (ScrapeView); in one process they read the same way.
        meta = model.metadata
        labels = (model.name, model.version)
        self.model_info.labels(*labels, str(meta.coding_size), str(meta.n_features)).set(0)
        for t in meta.thresholds:
            self.model_threshold.labels(*labels, t.name).set(RETIRED)
        for i in range(len(model.drift.expected)):
            self.score_reference.labels(*labels, str(i)).set(RETIRED)
            self.score_window.labels(*labels, str(i)).set(0)
        with self._series_lock:
            series = self._series.get(labels)
            if series is not None and series.model is model:
                del self._series[labels]

    def model_reloaded(self, result: str) -> None:
        """Count one reload outcome ("ok" or "failed")."""
        self.model_reloads.labels(result).inc()

    def _bind(self, model: LoadedModel) -> _ModelSeries:
        labels = (model.name, model.version)
        with self._series_lock:
            series = self._series.get(labels)
            if series is None or series.model is not model:
                series = _ModelSeries(
                    samples=self.samples_scored.labels(*labels),
                    anomalies=[
                        None,
                        *(self.anomalies.labels(*labels, name) for name in model.severity_names[1:]),
                    ],
                    normalized=self.normalized_score.labels(*labels),
                    model=model,
                )
                self._series[labels] = series
            return series

    def series_snapshot(self) -> list[_ModelSeries]:
        with self._series_lock:
            return list(self._series.values())
