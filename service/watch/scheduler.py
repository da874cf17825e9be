"""The watch loop: every interval, every model, every group: fetch, align, score, publish, expire.

A failure of Prometheus (down, slow, errors) is retried with back-off within the cycle, then counted;
the groups it hides get no fresh score and drop off /metrics after ``stale_after``. Nothing that
happens in a cycle ends the loop.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from service.errors import AeguardError, ModelLoadError
from service.metrics.watch import GroupScore, ScoreBoard, WatchMetrics
from service.model_store import LoadedModel, ModelStore
from service.scorer import ScoreBatch
from service.watch.align import MODEL_ERROR, OVER_LIMIT, GroupKey, Table, align, group_keys, last_samples
from service.watch.config import WatchSettings, shard_of
from service.watch.prometheus import PrometheusClient, PrometheusError, SeriesSet
from service.watch.spec import WatchSpec, watch_spec
from service.watch.times import parse_duration
from service.windows import WindowSpec

log = logging.getLogger(__name__)

T = TypeVar("T")


def with_retries(
    call: Callable[[], T],
    *,
    retries: int,
    backoff_s: float,
    deadline_s: float,
    stop: threading.Event,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``call()``, tried again after a retryable :class:`PrometheusError` up to ``retries`` times, waiting
    ``backoff_s``, then twice as long each time; never waits past ``deadline_s`` (on ``clock``) or a stop."""
    attempt = 0
    while True:
        try:
            return call()
        except PrometheusError as exc:
            wait = backoff_s * 2**attempt
            if not exc.retryable or attempt >= retries or clock() + wait > deadline_s:
                raise
            log.debug("retrying in %.2f s after: %s", wait, exc.message)
            if stop.wait(wait):
                raise
            attempt += 1


@dataclass
class CycleReport:
    """What one cycle did and cost (for logs, tests and the benchmark)."""

    duration_s: float = 0.0
    cpu_s: float = 0.0
    query_s: float = 0.0  # wall time inside HTTP requests to Prometheus
    queries: int = 0
    scored: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    failed_models: dict[str, str] = field(default_factory=dict)  # model -> reason
    #: Wall time per phase: fetch (queries, decoding included), align, score, publish.
    phase_s: Counter[str] = field(default_factory=Counter)

    @property
    def result(self) -> str:
        return (
            "failed" if self.failed_models and not self.scored else "partial" if self.failed_models else "ok"
        )


class Watcher:
    """Scores every group of every model in ``store`` once per :meth:`cycle`."""

    def __init__(
        self,
        settings: WatchSettings,
        store: ModelStore,
        metrics: WatchMetrics,
        board: ScoreBoard,
        *,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.board = board
        self.stop = stop or threading.Event()
        self.clock = clock
        self.client = PrometheusClient(settings.access(), on_request=self._on_request)
        self._shard = settings.shard_index
        self._backoff_s = parse_duration(settings.retry_backoff)
        self._watched: dict[str, set[GroupKey]] = {}
        self._warned: set[tuple[str, str]] = set()
        self._query_s = 0.0
        self._queries = 0

    def _on_request(self, endpoint: str, seconds: float, outcome: str) -> None:
        self.metrics.on_request(endpoint, seconds, outcome)
        self._query_s += seconds
        self._queries += 1

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> None:
        """Cycle every interval until :attr:`stop` is set (a late cycle starts the next one at once)."""
        interval = self.settings.interval_s
        next_start = time.monotonic()
        while not self.stop.is_set():
            try:
                self.cycle()
            except Exception:  # cycle() counts its own failures; this is a last line of defence
                log.exception("watch cycle failed unexpectedly; the next one runs as planned")
            next_start = max(next_start + interval, time.monotonic())
            self.stop.wait(max(0.0, next_start - time.monotonic()))

    def cycle(self) -> CycleReport:
        """Score every model once; publish, expire, count. Never raises."""
        started, cpu0 = time.perf_counter(), time.process_time()
        self._query_s, self._queries = 0.0, 0
        report = CycleReport()
        deadline = time.monotonic() + 0.9 * self.settings.interval_s
        at = self.clock()
        models = self.store.models()
        for model in models:
            try:
                self._score_model(model, at, deadline, report)
            except PrometheusError as exc:
                self._fail(model, exc.reason, exc.message, report)
            except AeguardError as exc:
                self._fail(model, MODEL_ERROR, exc.message, report)
            except Exception as exc:  # the loop outlives any surprise; the traceback goes to the log once
                if (model.name, "unexpected") not in self._warned:
                    self._warned.add((model.name, "unexpected"))
                    log.exception("model '%s': unexpected error in a watch cycle", model.name)
                self._fail(model, MODEL_ERROR, f"{type(exc).__name__}: {exc}", report)
        self._forget_unloaded({m.name for m in models})
        for name, count in self.board.expire(self.settings.stale_after_s).items():
            self.metrics.scores_expired.labels(name).inc(count)
        report.duration_s = time.perf_counter() - started
        report.cpu_s = time.process_time() - cpu0
        report.query_s, report.queries = self._query_s, self._queries
        self.metrics.cycles.labels(report.result).inc()
        self.metrics.cycle_duration.observe(report.duration_s)
        if report.result == "ok":
            self.metrics.last_success.set(self.clock())
        return report

    def _fail(self, model: LoadedModel, reason: str, message: str, report: CycleReport) -> None:
        report.failed_models[model.name] = reason
        self.metrics.model_failures.labels(model.name, reason).inc()
        log.warning("model '%s': not scored this cycle (%s): %s", model.name, reason, message)

    def _forget_unloaded(self, names: set[str]) -> None:
        """A model no longer in the store (its file was removed): its series leave /metrics."""
        for name in (set(self._watched) | self.board.model_names()) - names:
            self.board.drop_model(name)
            self._watched.pop(name, None)

    # -- one model ---------------------------------------------------------------------------------
    def _score_model(self, model: LoadedModel, at: float, deadline: float, report: CycleReport) -> None:
        spec = watch_spec(model.metadata, model.source)
        t0 = time.perf_counter()
        results, other_shard = self._fetch(spec, model.scorer.window, at, deadline)
        t1 = time.perf_counter()
        table = align(results, spec.group_by)
        chosen = self._within_limit(model.name, table)
        size = spec.window_size
        end = at if size == 1 else math.floor(at / spec.step_s) * spec.step_s
        groups, windows, skipped = last_samples(table, model.scorer.window, spec.step_s, end, chosen)
        skipped.update(table.dropped_groups)
        skipped[OVER_LIMIT] += len(table.groups) - len(chosen)
        t2 = t3 = time.perf_counter()
        try:
            if groups:
                batch = model.scorer.score(
                    windows[:, 0, :] if size == 1 else windows, with_feature_errors=True
                )
                t3 = time.perf_counter()
                self._publish(model, spec, table, groups, batch, end)
        except AeguardError:
            skipped[MODEL_ERROR] += len(groups)
            groups = []
            raise
        finally:
            report.phase_s.update(
                {"fetch": t1 - t0, "align": t2 - t1, "score": t3 - t2, "publish": time.perf_counter() - t3}
            )
            for reason, count in skipped.items():
                if count:
                    self.metrics.rows_skipped.labels(model.name, reason).inc(count)
            report.skipped.update(skipped)
        report.scored += len(groups)
        self.metrics.groups.labels(model.name, "watched").set(len(groups))
        self.metrics.groups.labels(model.name, "over_limit").set(len(table.groups) - len(chosen))
        self.metrics.groups.labels(model.name, "other_shard").set(other_shard)

    def _fetch(
        self, spec: WatchSpec, window: WindowSpec | None, at: float, deadline: float
    ) -> tuple[dict[str, SeriesSet], int]:
        """Every feature's series for this shard; how many groups belong to other shards."""
        index, shards = self._shard
        size = spec.window_size
        end = math.floor(at / spec.step_s) * spec.step_s
        results: dict[str, SeriesSet] = {}
        others: set[GroupKey] = set()
        # A window may span short gaps (up to the model's max_gap steps): read far enough back.
        start = end - (size - 1) * spec.step_s * (window.max_gap if window is not None else 1.0)
        for name, promql in spec.queries.items():
            call: Callable[[], SeriesSet] = (
                functools.partial(self.client.query, promql, at)
                if size == 1
                else functools.partial(self.client.query_range, promql, start, end, spec.step_s)
            )
            series = self._retrying(call, deadline)
            if shards > 1:
                keys = group_keys(series.labels, spec.group_by)
                mine = np.array([shard_of(k, shards) == index for k in keys], dtype=bool)
                others.update(k for k, m in zip(keys, mine.tolist(), strict=True) if not m)
                series = series.select(mine)
            results[name] = series
        return results, len(others)

    def _retrying(self, call: Callable[[], T], deadline: float) -> T:
        return with_retries(
            call,
            retries=self.settings.retries,
            backoff_s=self._backoff_s,
            deadline_s=deadline,
            stop=self.stop,
        )

    def _within_limit(self, model_name: str, table: Table) -> list[int]:
        """Indices of the groups to score: at most max_groups, those already watched first."""
        limit = self.settings.max_groups
        if len(table.groups) <= limit:
            return list(range(len(table.groups)))
        before = self._watched.get(model_name, set())
        order = sorted(
            range(len(table.groups)), key=lambda g: (table.groups[g] not in before, table.groups[g])
        )
        if (model_name, "limit") not in self._warned:
            self._warned.add((model_name, "limit"))
            log.warning(
                "model '%s': %d groups, more than --max-groups %d; the %d others are not scored "
                '(aeguard_watch_groups{state="over_limit"}); logged once',
                model_name,
                len(table.groups),
                limit,
                len(table.groups) - limit,
            )
        return sorted(order[:limit])

    def _publish(
        self,
        model: LoadedModel,
        spec: WatchSpec,
        table: Table,
        groups: list[int],
        batch: ScoreBatch,
        end: float,
    ) -> None:
        assert batch.feature_errors is not None
        errors = np.asarray(batch.feature_errors, dtype=np.float64)
        # The top feature as top_features(k=1) picks it (the first of equal errors), for all groups at once.
        top = np.argmax(errors, axis=1)
        totals = errors.sum(axis=1)
        shares = np.divide(errors[np.arange(len(top)), top], totals, out=np.zeros(len(top)), where=totals > 0)
        names = model.metadata.feature_names
        now = time.monotonic()
        columns = zip(
            batch.score.tolist(),
            batch.normalized_score.tolist(),
            batch.severity_level.tolist(),
            batch.is_anomaly.tolist(),
            top.tolist(),
            shares.tolist(),
            strict=True,
        )
        base = {"model_name": model.name, "model_version": model.version}
        entries = []
        for g, (score, normalized, level, anomaly, j, share) in zip(groups, columns, strict=True):
            key = table.groups[g]
            labels = {**base, **dict(zip(spec.group_by, key, strict=True))}
            entries.append(
                (key, GroupScore(labels, score, normalized, level, anomaly, names[j], share, end, now))
            )
        self.board.publish(model.name, entries)
        self._watched[model.name] = {key for key, _ in entries}


def check_models(store: ModelStore) -> None:
    """Raise :class:`ModelLoadError` unless every loaded model carries a Prometheus source."""
    problems = []
    for model in store.models():
        try:
            watch_spec(model.metadata, model.source)
        except ModelLoadError as exc:
            problems.append(exc.message)
    if problems:
        raise ModelLoadError("; ".join(problems))
