"""`aeguard watch` and `aeguard train --prometheus`, fast tier: parsing, alignment, sharding, limits,
stale removal and back-off, against a tiny Prometheus HTTP API on 127.0.0.1 (tests/watch_support.py).

The slow end-to-end test with the real Prometheus is tests/test_watch_e2e.py.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_arrays
from prometheus_client.parser import text_string_to_metric_families
from watch_support import FakePrometheus, FakeState, basic

from service.artifact import ModelMetadata
from service.errors import InvalidInputError, ModelLoadError
from service.metrics.watch import GroupScore, ScoreBoard, WatchMetrics
from service.model_store import ModelStore
from service.watch import align as al
from service.watch.config import WatchSettings, parse_shard, shard_of
from service.watch.prometheus import (
    MAX_POINTS,
    PrometheusAccess,
    PrometheusClient,
    PrometheusError,
    Series,
    range_chunks,
)
from service.watch.scheduler import Watcher, with_retries
from service.watch.spec import parse_group_by, parse_queries, watch_spec
from service.watch.times import format_duration, parse_duration, parse_time

ROOT = Path(__file__).resolve().parent.parent
FEATURES = [f"f{i}" for i in range(8)]
INSTANCES = ["a", "b", "c", "d", "e"]
STEP_S = 10.0


# -- parsing (no sockets) ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,seconds",
    [
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("1d", 86400),
        ("2w", 1209600),
        ("15", 15),
        ("0.5", 0.5),
    ],
)
def test_durations_parse_as_prometheus_does(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "5x", "-1", "0s", "1.5m", "m5", "nan", "inf"])
def test_bad_durations_are_refused_naming_the_flag(text: str) -> None:
    with pytest.raises(InvalidInputError, match="--step"):
        parse_duration(text, "--step")


def test_times_parse_rfc3339_unix_and_now() -> None:
    assert parse_time("2026-12-07T01:00:00Z") == 1796605200.0
    assert parse_time("2026-12-07T02:00:00+01:00") == 1796605200.0
    assert parse_time("2026-12-07T01:00:00.5Z") == 1796605200.5
    assert parse_time("1796605200") == 1796605200.0
    assert parse_time("now", now=1000.0) == 1000.0
    assert parse_time("now-1h", now=5000.0) == 1400.0
    for bad in ("2026-12-07 01:00", "2026-12-07T01:00:00", "yesterday", "-5"):
        with pytest.raises(InvalidInputError, match="--start"):
            parse_time(bad, "--start")


def test_queries_and_group_by_parse_and_refuse_clearly() -> None:
    assert parse_queries(["cpu=rate(x[1m])", "mem = sum by (instance) (m)"]) == {
        "cpu": "rate(x[1m])",
        "mem": "sum by (instance) (m)",
    }
    assert parse_queries(["q=a == b"]) == {"q": "a == b"}  # only the first '=' separates the name
    for bad in (["cpu"], ["=x"], ["a=x", "a=y"], []):
        with pytest.raises(InvalidInputError, match="query"):
            parse_queries(bad)
    assert parse_group_by("instance, job") == ("instance", "job")
    for bad in ("model_name", "__name__", "a-b", "x,x"):
        with pytest.raises(InvalidInputError, match="group-by"):
            parse_group_by(bad)


def test_range_chunks_respect_the_point_limit_without_gaps_or_overlap() -> None:
    chunks = range_chunks(1000.0, 1000.0 + 25_000 * 10, 10.0)
    assert len(chunks) == 3
    points = [round((hi - lo) / 10) + 1 for lo, hi in chunks]
    assert all(p <= MAX_POINTS for p in points) and sum(points) == 25_001
    assert all(b[0] - a[1] == 10.0 for a, b in itertools.pairwise(chunks))
    assert range_chunks(5.0, 5.0, 1.0) == [(5.0, 5.0)]


def test_shards_are_stable_and_split_groups_without_overlap() -> None:
    keys = [(f"host-{i}",) for i in range(1000)]
    shards = [shard_of(k, 4) for k in keys]
    assert shards == [shard_of(k, 4) for k in keys]
    assert set(Counter(shards)) == {0, 1, 2, 3} and min(Counter(shards).values()) > 200
    assert shard_of(("host-1",), 1) == 0
    # The hash is blake2b of the label values: the same in every process and release.
    code = "from service.watch.config import shard_of; print(shard_of(('host-7', 'web'), 7))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert int(out.stdout) == shard_of(("host-7", "web"), 7)
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "1", "a/b", "0/0"):
        with pytest.raises(InvalidInputError, match="shard"):
            parse_shard(bad)


def test_settings_layer_flags_over_environment_and_check_values(tmp_path: Path) -> None:
    from service.config import settings_from_sources

    env = {"AEGUARD_INTERVAL": "1m", "AEGUARD_MAX_GROUPS": "7", "AEGUARD_MODEL": "m.onnx"}
    s = settings_from_sources(WatchSettings, {"prometheus": "http://p:9090", "max_groups": 9}, env)
    assert (s.interval_s, s.max_groups, s.model, s.stale_after_s) == (60.0, 9, "m.onnx", 180.0)
    for values, match in (
        ({"interval": "soon"}, "interval"),
        ({"shard": "4/2"}, "shard"),
        ({"prometheus": "prometheus:9090"}, "http://"),
        ({"prometheus_bearer_token_file": str(tmp_path / "none")}, "no such file"),
    ):
        with pytest.raises(InvalidInputError, match=match):
            settings_from_sources(WatchSettings, {"prometheus": "http://p:9090", "model": "m", **values}, {})


# -- alignment --------------------------------------------------------------------------------------
def _series(instance: str, times: list[float], values: list[float], **labels: str) -> Series:
    return Series({"instance": instance, **labels}, np.array(times, float), np.array(values, float))


def test_align_makes_one_row_per_group_and_time_and_counts_what_it_drops() -> None:
    results = {
        "x": [
            _series("b", [10, 20, 30], [1, 2, 3]),
            _series("a", [10, 20, 30], [4, 5, 6]),
            _series("c", [10], [0]),
        ],
        "y": [
            _series("a", [10, 30], [7, 9]),  # no point at 20
            _series("b", [10, 20, 30], [8, float("nan"), 1e300]),  # NaN at 20, past float32 at 30
            _series("d", [10], [1]),  # d has no x, c has no y
        ],
    }
    table = al.align(results, ["instance"])
    assert table.groups == [("a",), ("b",)]  # sorted; c and d lack a feature
    assert table.feature_names == ["x", "y"]
    assert table.timestamps.tolist() == [10, 30, 10]
    assert table.x.tolist() == [[4, 7], [6, 9], [1, 8]]
    assert table.skipped == Counter({al.MISSING_FEATURE: 3, al.NON_FINITE: 2})
    assert table.dropped_groups == Counter({al.MISSING_FEATURE: 2})
    assert table.to_arrow().column_names == ["instance", "timestamp", "x", "y"]


def test_align_refuses_to_guess_between_two_series_of_one_group() -> None:
    results = {
        "x": [_series("a", [10], [1], job="p"), _series("a", [10], [2], job="q"), _series("b", [10], [3])]
    }
    table = al.align(results, ["instance"])
    assert table.groups == [("b",)] and table.skipped[al.DUPLICATE_SERIES] == 1
    # Grouped by both labels, the two series are two groups.
    assert al.align(results, ["instance", "job"]).groups == [("a", "p"), ("a", "q"), ("b", "")]


def test_last_samples_are_windows_without_gaps_ending_now() -> None:
    results = {
        "x": [
            _series("a", [10, 20, 30, 40], [1, 2, 3, 4]),
            _series("b", [10, 30, 40], [1, 3, 4]),  # gap at 20
            _series("c", [10, 20, 30], [1, 2, 3]),  # nothing at 40
        ]
    }
    from service.windows import WindowSpec

    table = al.align(results, ["instance"])
    # A gap is more than max_gap steps between rows: 20 s is one with 1.5, not with 3.
    groups, windows, skipped = al.last_samples(table, WindowSpec(3, step=10.0, max_gap=1.5), 10.0, 40.0)
    assert groups == [0] and windows[0, :, 0].tolist() == [2, 3, 4]
    assert skipped == Counter({al.WINDOW_INCOMPLETE: 1, al.MISSING_FEATURE: 1})
    groups, windows, _ = al.last_samples(table, WindowSpec(3, step=10.0, max_gap=3.0), 10.0, 40.0)
    assert groups == [0, 1] and windows[1, :, 0].tolist() == [1, 3, 4]
    groups, windows, _ = al.last_samples(table, None, 10.0, 40.0)
    assert groups == [0, 1] and windows.shape == (2, 1, 1)


# -- back-off and the score board (no sockets) -------------------------------------------------------
def test_retries_back_off_then_give_up_and_stop_promptly() -> None:
    calls: list[float] = []
    waits: list[float] = []

    class Clock(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(float(timeout or 0))
            return False

    def flaky() -> str:
        calls.append(0)
        if len(calls) < 3:
            raise PrometheusError("down", "unreachable", retryable=True)
        return "ok"

    assert with_retries(flaky, retries=3, backoff_s=0.5, deadline_s=1e12, stop=Clock()) == "ok"
    assert waits == [0.5, 1.0]
    calls.clear()
    with pytest.raises(PrometheusError):  # two retries allowed, three failures needed
        with_retries(flaky, retries=1, backoff_s=0.5, deadline_s=1e12, stop=Clock())
    assert len(calls) == 2
    calls.clear()
    with pytest.raises(PrometheusError):  # the next wait would pass the deadline
        with_retries(flaky, retries=5, backoff_s=10, deadline_s=time.monotonic() + 5, stop=Clock())
    assert len(calls) == 1

    def bad_query() -> str:
        calls.append(0)
        raise PrometheusError("parse error", "bad_query", retryable=False)

    calls.clear()
    with pytest.raises(PrometheusError):
        with_retries(bad_query, retries=5, backoff_s=0.01, deadline_s=1e12, stop=Clock())
    assert len(calls) == 1
    stopped = threading.Event()
    stopped.set()
    calls.clear()
    with pytest.raises(PrometheusError):
        with_retries(flaky, retries=5, backoff_s=60, deadline_s=1e12, stop=stopped)
    assert len(calls) == 1


def test_score_board_expires_entries_not_refreshed_in_time() -> None:
    board = ScoreBoard()

    def entry(instance: str, updated: float) -> tuple[tuple[str, ...], GroupScore]:
        labels = {"model_name": "m", "model_version": "1", "instance": instance}
        return (instance,), GroupScore(labels, 1.0, 0.5, 0, False, "cpu", 0.7, 100.0, updated)

    board.publish("m", [entry("a", 100.0), entry("b", 90.0)])
    assert board.expire(15.0, now_s=110.0) == {"m": 1}
    assert board.groups("m") == {("a",)}
    samples = {(m.name, s.labels.get("instance")) for m in board.collect() for s in m.samples}
    assert ("aeguard_watch_normalized_score", "a") in samples and (
        "aeguard_watch_normalized_score",
        "b",
    ) not in samples


# -- against the tiny Prometheus API ----------------------------------------------------------------
@pytest.fixture(scope="module")
def fake() -> FakeState:
    x, y = make_tiny_arrays()
    return FakeState(rows=x[y == 0], features=list(FEATURES), instances=list(INSTANCES), step_s=STEP_S)


@pytest.fixture(scope="module")
def prom(fake: FakeState):
    with FakePrometheus(fake) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset(fake: FakeState):
    yield
    fake.fail_next, fake.delay_s, fake.require_auth = 0, 0.0, ""
    fake.missing.clear(), fake.nan.clear(), fake.duplicated.clear(), fake.anomalous.clear()
    fake.requests.clear()


def test_client_splits_long_ranges_and_joins_the_parts(prom: FakePrometheus, fake: FakeState) -> None:
    client = PrometheusClient(PrometheusAccess(prom.url))
    series = client.query_range("f0", 0.0, 25_000 * STEP_S, STEP_S)
    assert len(fake.requests) == 3  # the fake refuses, as Prometheus does, more than 11,000 points
    assert sorted(s.labels["instance"] for s in series) == INSTANCES
    ts = series[0].timestamps
    assert ts.size == 25_001 and np.all(np.diff(ts) == STEP_S)


def test_client_sends_bearer_and_basic_auth_from_files(
    prom: FakePrometheus, fake: FakeState, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    fake.require_auth = "Bearer s3cret"
    assert PrometheusClient(PrometheusAccess(prom.url, bearer_token_file=str(token))).query("f1", 100.0)
    with pytest.raises(PrometheusError) as err:
        PrometheusClient(PrometheusAccess(prom.url)).query("f1", 100.0)
    assert err.value.reason == "http_4xx" and "401" in err.value.message
    password = tmp_path / "password"
    password.write_text("pw")
    fake.require_auth = basic("ops", "pw")
    access = PrometheusAccess(prom.url, username="ops", password_file=str(password))
    assert len(PrometheusClient(access).query("f1", 100.0)) == len(INSTANCES)


def test_client_names_each_kind_of_failure(prom: FakePrometheus, fake: FakeState) -> None:
    client = PrometheusClient(PrometheusAccess(prom.url, timeout_s=0.3))
    fake.fail_next = 1
    with pytest.raises(PrometheusError) as err:
        client.query("f0", 100.0)
    assert (err.value.reason, err.value.retryable) == ("http_5xx", True)
    with pytest.raises(PrometheusError) as err:
        client.query("nonsense(", 100.0)
    assert (err.value.reason, err.value.retryable) == (
        "bad_query",
        False,
    ) and "parse error" in err.value.message
    fake.delay_s = 1.0
    with pytest.raises(PrometheusError) as err:
        client.query("f0", 100.0)
    assert err.value.reason == "timeout"
    fake.delay_s = 0.0
    closed = PrometheusClient(PrometheusAccess("http://127.0.0.1:9", timeout_s=2))
    with pytest.raises(PrometheusError) as err:
        closed.query("f0", 100.0)
    assert err.value.reason == "unreachable"


@pytest.fixture(scope="module")
def trained(prom: FakePrometheus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained by `aeguard train --prometheus` on the fake's history (a few seconds)."""
    from service.cli import main

    out_dir = tmp_path_factory.mktemp("watch_model")
    end = 1_796_000_000.0
    argv = ["train", "--prometheus", prom.url, "--step", "10s", "--group-by", "instance"]
    argv += [a for f in FEATURES for a in ("--query", f"{f}={f}")]
    argv += ["--start", str(end - 700 * STEP_S), "--end", str(end), "--out", str(out_dir / "fake.onnx")]
    argv += ["--name", "fake", "--model-version", "1", "--save-data", str(out_dir / "history.csv")]
    argv += ["--max-epochs", "30", "--crossfit-folds", "0", "--no-progress"]
    argv += ["--hidden", "16", "--coding-size", "2"]
    argv += ["--threshold", "warning=q0.99", "--threshold", "critical=q0.999"]
    assert main(argv) == 0
    return out_dir / "fake.onnx"


def test_train_from_prometheus_records_the_queries_in_the_model(trained: Path) -> None:
    import onnx

    meta = ModelMetadata.from_json(onnx.load(str(trained)).metadata_props[0].value)
    spec = watch_spec(meta)
    assert (
        spec.queries == {f: f for f in FEATURES} and spec.step_s == STEP_S and spec.group_by == ("instance",)
    )
    assert meta.training["prometheus"]["rows"] == 701 * len(INSTANCES)
    saved = (trained.parent / "history.csv").read_text().splitlines()
    assert saved[0] == '"instance","timestamp",' + ",".join(f'"{f}"' for f in FEATURES)
    assert len(saved) == 1 + 701 * len(INSTANCES)


def test_a_model_trained_from_a_file_is_refused_by_watch(tiny_model_path: Path) -> None:
    store = ModelStore()
    store.load_path(tiny_model_path)
    with pytest.raises(ModelLoadError, match="not trained from Prometheus"):
        watch_spec(store.get().metadata)


def _watcher(trained: Path, url: str, **values: object) -> tuple[Watcher, ScoreBoard, WatchMetrics, object]:
    from prometheus_client import CollectorRegistry

    settings = WatchSettings(prometheus=url, model=str(trained), **values)  # type: ignore[arg-type]
    registry = CollectorRegistry()
    metrics, board = WatchMetrics(registry), ScoreBoard()
    registry.register(board)
    store = ModelStore()
    store.load_path(trained)
    return Watcher(settings, store, metrics, board), board, metrics, registry


def _value(registry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_cycle_scores_every_group_and_the_faulty_one_stands_out(
    trained: Path, prom: FakePrometheus, fake: FakeState
) -> None:
    fake.anomalous["c"] = 4.0
    watcher, board, _metrics, registry = _watcher(trained, prom.url)
    report = watcher.cycle()
    assert report.result == "ok" and report.scored == len(INSTANCES) and report.queries == len(FEATURES)
    scores = {
        i: _value(
            registry, "aeguard_watch_normalized_score", model_name="fake", model_version="1", instance=i
        )
        for i in INSTANCES
    }
    assert scores["c"] >= 1.0 and scores["c"] > max(v for k, v in scores.items() if k != "c")
    top = [s for m in board.collect() if m.name == "aeguard_watch_top_feature_share" for s in m.samples]
    assert next(s for s in top if s.labels["instance"] == "c").labels["feature"] == "f0"
    assert {s.labels["feature"] for s in top} <= set(FEATURES)
    assert _value(registry, "aeguard_watch_groups", model_name="fake", state="watched") == len(INSTANCES)
    assert _value(registry, "aeguard_watch_last_success_timestamp_seconds") > 0


def test_incomplete_groups_are_skipped_counted_and_expire(
    trained: Path, prom: FakePrometheus, fake: FakeState
) -> None:
    watcher, board, _metrics, registry = _watcher(trained, prom.url, stale_after="300ms")
    assert watcher.cycle().scored == 5
    time.sleep(0.4)
    fake.missing["f3"] = {"d"}
    fake.nan["f5"] = {"e"}
    report = watcher.cycle()
    assert report.scored == 3
    assert report.skipped == Counter({al.MISSING_FEATURE: 1, al.NON_FINITE: 1})
    assert (
        _value(registry, "aeguard_watch_rows_skipped_total", model_name="fake", reason="missing_feature") == 1
    )
    assert _value(registry, "aeguard_watch_rows_skipped_total", model_name="fake", reason="non_finite") == 1
    assert board.groups("fake") == {("a",), ("b",), ("c",)}  # d and e removed: not refreshed in time
    assert _value(registry, "aeguard_watch_scores_expired_total", model_name="fake") == 2


def test_max_groups_caps_and_keeps_the_groups_already_watched(
    trained: Path, prom: FakePrometheus, caplog
) -> None:
    watcher, board, _metrics, registry = _watcher(trained, prom.url, max_groups=3)
    with caplog.at_level("WARNING"):
        assert watcher.cycle().scored == 3
        assert watcher.cycle().scored == 3
    assert board.groups("fake") == {("a",), ("b",), ("c",)}
    assert _value(registry, "aeguard_watch_groups", model_name="fake", state="over_limit") == 2
    assert (
        _value(registry, "aeguard_watch_rows_skipped_total", model_name="fake", reason="over_max_groups") == 4
    )
    assert sum("max-groups" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_shards_split_the_groups_without_overlap(trained: Path, prom: FakePrometheus) -> None:
    seen: list[set] = []
    for i in range(3):
        watcher, board, _, registry = _watcher(trained, prom.url, shard=f"{i}/3")
        watcher.cycle()
        seen.append(board.groups("fake"))
        assert _value(registry, "aeguard_watch_groups", model_name="fake", state="other_shard") == 5 - len(
            seen[-1]
        )
    assert sum(len(s) for s in seen) == 5 and set().union(*seen) == {(i,) for i in INSTANCES}


def test_prometheus_failures_are_retried_then_counted_and_never_fatal(
    trained: Path, prom: FakePrometheus, fake: FakeState
) -> None:
    watcher, _board, _metrics, registry = _watcher(trained, prom.url, retries=2, retry_backoff="10ms")
    fake.fail_next = 2  # the first query fails twice, then answers
    assert watcher.cycle().result == "ok"
    assert _value(registry, "aeguard_watch_queries_total", endpoint="query", result="http_5xx") == 2
    fake.fail_next = 10_000
    report = watcher.cycle()
    assert report.result == "failed" and report.failed_models == {"fake": "http_5xx"}
    assert _value(registry, "aeguard_watch_model_failures_total", model_name="fake", reason="http_5xx") == 1
    assert _value(registry, "aeguard_watch_cycles_total", result="failed") == 1
    fake.fail_next = 0
    assert watcher.cycle().result == "ok"


def test_watch_serves_metrics_and_exits_promptly_on_sigterm(
    trained: Path, prom: FakePrometheus, tmp_path: Path
) -> None:
    env = {**os.environ, "AEGUARD_PROMETHEUS": prom.url}
    log = (tmp_path / "watch.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "watch",
            "--model",
            str(trained),
            "--metrics-port",
            "0",
            "--interval",
            "1s",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "metrics on http://127.0.0.1:" in line, line + (tmp_path / "watch.log").read_text()
        url = line.strip().rsplit(" ", 1)[-1]
        deadline = time.monotonic() + 60
        families: dict = {}
        while time.monotonic() < deadline:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            families = {f.name: f for f in text_string_to_metric_families(text)}
            if families["aeguard_watch_normalized_score"].samples:
                break
            time.sleep(0.2)
        labels = {s.labels["instance"] for s in families["aeguard_watch_normalized_score"].samples}
        assert labels == set(INSTANCES)
        assert families["aeguard_watch_model_info"].samples[0].labels == {
            "model_name": "fake",
            "model_version": "1",
        }
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_history_counts_what_it_drops(prom: FakePrometheus, fake: FakeState) -> None:
    from service.watch.history import fetch_history

    fake.missing["f2"] = {"e"}
    fake.nan["f1"] = {"d"}
    client = PrometheusClient(PrometheusAccess(prom.url))
    queries = {f: f for f in FEATURES}
    table = fetch_history(client, queries, 1000.0, 1000.0 + 9 * STEP_S, STEP_S, ("instance",))
    assert table.groups == [("a",), ("b",), ("c",)] and table.n_rows == 30
    assert table.skipped == Counter({al.MISSING_FEATURE: 10, al.NON_FINITE: 10})


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--step", "10s"], "--start"),
        (["--start", "now-1h", "--step", "soon"], "--step"),
        (["--start", "now-1h", "--step", "10s", "--end", "now-2h"], "after --start"),
        (["--start", "now-1h", "--step", "10s", "--group-by", "model_name"], "group-by"),
    ],
)
def test_train_from_prometheus_refuses_bad_flags_in_one_line(
    prom: FakePrometheus, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    from service.cli import main

    argv = ["train", "--prometheus", prom.url, "--query", "f0=f0", "--out", str(tmp_path / "m.onnx"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "m.onnx").exists()


def test_a_query_without_prometheus_is_refused(tmp_path: Path, capsys) -> None:
    from service.cli import main

    assert main(["train", "--default", "--query", "a=b", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "need --prometheus" in capsys.readouterr().err


def test_watch_reloads_a_republished_model(trained: Path, prom: FakePrometheus, tmp_path: Path) -> None:
    import json as jsonlib
    import shutil

    import onnx

    from service.artifact import METADATA_KEY
    from service.watch.main import start_watch

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(trained, models / "fake.onnx")
    settings = WatchSettings(
        prometheus=prom.url, model=str(models), interval="200ms", metrics_port=0, reload_interval_s=0.2
    )
    handle = start_watch(settings)
    try:

        def scores() -> dict[str, set[str]]:
            url = f"http://127.0.0.1:{handle.metrics_port}/metrics"
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            fams = {f.name: f for f in text_string_to_metric_families(text)}
            return {
                name: {s.labels["model_version"] for s in fams[name].samples}
                for name in ("aeguard_watch_model_info", "aeguard_watch_normalized_score")
            }

        _until(lambda: scores()["aeguard_watch_normalized_score"] == {"1"})
        model = onnx.load(str(trained))
        prop = next(p for p in model.metadata_props if p.key == METADATA_KEY)
        prop.value = jsonlib.dumps({**jsonlib.loads(prop.value), "version": "2"}, sort_keys=True)
        onnx.save(model, str(models / ".fake.onnx.partial"))
        (models / ".fake.onnx.partial").rename(models / "fake.onnx")  # publish by rename
        _until(
            lambda: scores() == {"aeguard_watch_model_info": {"2"}, "aeguard_watch_normalized_score": {"2"}}
        )
    finally:
        handle.stop()


def _until(check, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_client_trusts_a_custom_ca_and_only_it(fake: FakeState, tmp_path: Path) -> None:
    from tls_support import make_pki

    pki = make_pki(tmp_path / "pki")
    with FakePrometheus(fake, tls=(str(pki.server_cert), str(pki.server_key))) as https:
        assert https.url.startswith("https://")
        trusted = PrometheusClient(PrometheusAccess(https.url, ca_file=str(pki.ca)))
        assert len(trusted.query("f0", 100.0)) == len(INSTANCES)
        stranger = PrometheusClient(PrometheusAccess(https.url, ca_file=str(pki.other_ca)))
        with pytest.raises(PrometheusError) as err:
            stranger.query("f0", 100.0)
        assert (err.value.reason, err.value.retryable) == ("tls", False)
        assert "--prometheus-ca-file" in err.value.message


def test_a_windowed_model_is_scored_on_the_last_w_steps(
    prom: FakePrometheus, fake: FakeState, tmp_path: Path
) -> None:
    from watch_support import write_windowed_model

    path = tmp_path / "windowed.onnx"
    write_windowed_model(path, fake.rows, FEATURES, STEP_S, size=4)
    fake.anomalous["b"] = 6.0
    watcher, _, _, registry = _watcher(path, prom.url)
    report = watcher.cycle()
    assert report.result == "ok" and report.scored == len(INSTANCES), report
    ranges = [r for r in fake.requests if r["path"] == "/api/v1/query_range"]
    assert len(ranges) == len(FEATURES) and not [r for r in fake.requests if r["path"] == "/api/v1/query"]
    params = ranges[0]["params"]
    # W = 4 steps, read back (W - 1) x max_gap steps so a window may span a short gap.
    assert float(params["end"]) - float(params["start"]) == 3 * 1.5 * STEP_S
    scores = {
        i: _value(
            registry, "aeguard_watch_normalized_score", model_name="windowed", model_version="1", instance=i
        )
        for i in INSTANCES
    }
    assert scores["b"] >= 1.0 and scores["b"] > max(v for k, v in scores.items() if k != "b")
