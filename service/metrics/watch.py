"""`aeguard watch`'s /metrics: the latest scores per watched group, and the watch's own health.

Scores live in a :class:`ScoreBoard`, a collector that builds its families at scrape time, so each
model's group labels appear under their own names (``instance="web-1"``). A group's series carry
``model_name`` and ``model_version``; the top contributing feature is one series per group whose
``feature`` label takes the model's feature names only (bounded). Entries not refreshed within
``stale_after_s`` are removed, so a scrape never shows an old score as if it were current.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from service.model_store import LoadedModel

log = logging.getLogger(__name__)

#: A watched group: the values of the model's group-by labels, in order.
GroupKey = tuple[str, ...]

#: Seconds; cycles and queries of a few ms up to the longest sensible interval.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class GroupScore:
    """One group's latest score under one model."""

    labels: dict[str, str]  # model_name, model_version and the group's own labels
    score: float
    normalized_score: float
    severity_level: int
    is_anomaly: bool
    top_feature: str
    top_feature_share: float
    data_timestamp_s: float  # the Prometheus time the score belongs to
    updated_s: float  # monotonic time it was published


#: (family name, help, the GroupScore attribute) of each per-group gauge.
SCORE_FAMILIES = (
    (
        "aeguard_watch_normalized_score",
        "Score / the model's primary threshold: >= 1 is anomalous.",
        "normalized_score",
    ),
    ("aeguard_watch_score", "Raw anomaly score (reconstruction error); higher is more anomalous.", "score"),
    (
        "aeguard_watch_severity_level",
        "Highest threshold crossed: 0 = none, i = the model's i-th threshold, lowest first.",
        "severity_level",
    ),
    ("aeguard_watch_anomaly", "1 when the score crosses the primary threshold, else 0.", "is_anomaly"),
    (
        "aeguard_watch_score_timestamp_seconds",
        "Unix time of the Prometheus data the score belongs to.",
        "data_timestamp_s",
    ),
)


class ScoreBoard(Collector):
    """The latest :class:`GroupScore` per (model, group); thread-safe; expires stale entries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, GroupKey], GroupScore] = {}
        self._thresholds: dict[str, tuple[str, list[tuple[str, float]]]] = {}

    def publish(self, model_name: str, scores: Iterable[tuple[GroupKey, GroupScore]]) -> None:
        with self._lock:
            for key, score in scores:
                self._entries[model_name, key] = score

    def set_thresholds(self, model_name: str, version: str, thresholds: list[tuple[str, float]]) -> None:
        with self._lock:
            self._thresholds[model_name] = (version, list(thresholds))

    def expire(self, older_than_s: float, now_s: float | None = None) -> dict[str, int]:
        """Remove entries not refreshed for ``older_than_s`` seconds; how many per model."""
        now = time.monotonic() if now_s is None else now_s
        removed: dict[str, int] = {}
        with self._lock:
            for key in [k for k, v in self._entries.items() if now - v.updated_s > older_than_s]:
                del self._entries[key]
                removed[key[0]] = removed.get(key[0], 0) + 1
        return removed

    def drop_model(self, model_name: str) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[0] == model_name]:
                del self._entries[key]
            self._thresholds.pop(model_name, None)

    def model_names(self) -> set[str]:
        """Models with scores or thresholds on the board."""
        with self._lock:
            return {k[0] for k in self._entries} | set(self._thresholds)

    def groups(self, model_name: str) -> set[GroupKey]:
        with self._lock:
            return {k[1] for k in self._entries if k[0] == model_name}

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            entries = list(self._entries.values())
            thresholds = dict(self._thresholds)
        for name, help_text, attr in SCORE_FAMILIES:
            family = Metric(name, help_text, "gauge")
            for e in entries:
                family.add_sample(name, e.labels, float(getattr(e, attr)))
            yield family
        top = Metric(
            "aeguard_watch_top_feature_share",
            "Share of the score owed to the group's top contributing feature (label: a model feature name).",
            "gauge",
        )
        for e in entries:
            top.add_sample(top.name, {**e.labels, "feature": e.top_feature}, e.top_feature_share)
        yield top
        levels = Metric("aeguard_watch_model_threshold", "The model's thresholds on the raw score.", "gauge")
        for model, (version, items) in thresholds.items():
            for level, value in items:
                labels = {"model_name": model, "model_version": version, "level": level}
                levels.add_sample(levels.name, labels, value)
        yield levels


class WatchMetrics:
    """`aeguard watch`'s own health, on the same registry as the scores."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queries = Counter(
            "aeguard_watch_queries",
            "HTTP requests to Prometheus by endpoint and result (ok, or why it failed).",
            ["endpoint", "result"],
            registry=registry,
        )
        self.query_duration = Histogram(
            "aeguard_watch_query_duration_seconds",
            "Duration of one HTTP request to Prometheus.",
            ["endpoint"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.cycles = Counter(
            "aeguard_watch_cycles",
            "Watch cycles by result: ok (every model scored), partial (some failed), failed (none scored).",
            ["result"],
            registry=registry,
        )
        self.cycle_duration = Histogram(
            "aeguard_watch_cycle_duration_seconds",
            "Duration of one watch cycle (every model's queries and scoring).",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.groups = Gauge(
            "aeguard_watch_groups",
            "Groups in the last cycle: watched (scored), over_limit (beyond --max-groups), other_shard.",
            ["model_name", "state"],
            registry=registry,
        )
        self.rows_skipped = Counter(
            "aeguard_watch_rows_skipped",
            "Groups not scored in a cycle, by reason (missing_feature, non_finite, duplicate_series, "
            "window_incomplete, over_max_groups, model_error).",
            ["model_name", "reason"],
            registry=registry,
        )
        self.model_failures = Counter(
            "aeguard_watch_model_failures",
            "Cycles in which a model could not be scored, by reason (a Prometheus failure or model_error).",
            ["model_name", "reason"],
            registry=registry,
        )
        self.scores_expired = Counter(
            "aeguard_watch_scores_expired",
            "Group scores removed from /metrics because they were not refreshed within stale-after.",
            ["model_name"],
            registry=registry,
        )
        self.last_success = Gauge(
            "aeguard_watch_last_success_timestamp_seconds",
            "Unix time of the end of the last cycle in which every model was scored.",
            registry=registry,
        )
        self.model_info = Gauge(
            "aeguard_watch_model_info",
            "1 per watched model.",
            ["model_name", "model_version"],
            registry=registry,
        )
        self.reloads = Counter(
            "aeguard_watch_model_reloads",
            "Model reloads by result (ok, failed).",
            ["result"],
            registry=registry,
        )

    def on_request(self, endpoint: str, seconds: float, outcome: str) -> None:
        self.queries.labels(endpoint, outcome).inc()
        self.query_duration.labels(endpoint).observe(seconds)


class ModelListener:
    """Keeps ``aeguard_watch_model_info`` and the thresholds in step with the model store."""

    def __init__(self, metrics: WatchMetrics, board: ScoreBoard) -> None:
        self.metrics = metrics
        self.board = board

    def model_loaded(self, model: LoadedModel) -> None:
        self.metrics.model_info.labels(model.name, model.version).set(1)
        self.board.set_thresholds(
            model.name, model.version, [(t.name, t.value) for t in model.metadata.thresholds]
        )

    def model_unloaded(self, model: LoadedModel) -> None:
        with contextlib.suppress(KeyError):
            self.metrics.model_info.remove(model.name, model.version)
