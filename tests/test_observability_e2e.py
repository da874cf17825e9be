"""End to end: the real server, batch job, Pushgateway and Prometheus, with the project's rules.

``aeguard serve`` serves the shared tiny model; ``aeguard score`` pushes its job metrics to a
real Pushgateway; a real Prometheus on 127.0.0.1 scrapes both every second with the project's
recording and alert rules loaded. A client sends normal traffic, then a burst of anomalies.
Asserted through Prometheus's HTTP API: the targets are up, the anomaly-rate alert is quiet on
normal traffic and fires during the burst, every rule evaluates without error, and every query of
every dashboard panel returns data.

The rules are loaded from a copy with two changes, so the test takes seconds rather than
minutes: AeguardAnomalyRateHigh's ``for`` is 2 s (10 m in production) and the baseline group is
evaluated at the global 1 s interval (5 m in production). Every process is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from serve_support import stop_process

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules"
ALERT = "AeguardAnomalyRateHigh"
#: The anomaly ratio that alert needs from a model with no history (the rule's fixed level).
NO_HISTORY_LEVEL = 0.10
#: Upper bounds on waiting for things that take seconds; the test never asserts on durations.
START_TIMEOUT_S = 60.0
ALERT_TIMEOUT_S = 60.0

#: Server-side metrics of the agreed list (docs/operations.md, "Metrics"): exposed sample name -> labels.
MV = frozenset({"model_name", "model_version"})
SERVER_METRICS: dict[str, frozenset[str]] = {
    "aeguard_rpc_requests_total": frozenset({"method", "code"}),
    "aeguard_rpc_duration_seconds_bucket": frozenset({"method", "le"}),
    "aeguard_rpc_in_flight": frozenset({"method"}),
    "aeguard_samples_scored_total": MV,
    "aeguard_anomalies_total": MV | {"severity"},
    "aeguard_normalized_score_bucket": MV | {"le"},
    "aeguard_batch_size_samples_bucket": frozenset({"method", "le"}),
    # One series per worker process (label pid), so a roll-over shows who serves which version.
    "aeguard_model_info": MV | {"coding_size", "n_features", "pid"},
    "aeguard_model_threshold": MV | {"threshold"},
    "aeguard_model_load_duration_seconds": frozenset({"model_name"}),
    "aeguard_model_reloads_total": frozenset({"result"}),
    "aeguard_score_drift_psi": MV,
    "aeguard_worker_processes": frozenset(),
}


# -- processes -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need(binary: str) -> str:
    path = shutil.which(binary)
    assert path, f"{binary} is not installed (.ci/run installs the Debian package)"
    return path


def http_get(url: str, timeout_s: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return bytes(resp.read())


def wait_for(what: str, check: Any, timeout_s: float = START_TIMEOUT_S, every_s: float = 0.25) -> Any:
    """Poll ``check()`` until it returns something truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except (OSError, ValueError, KeyError) as exc:  # not up yet
            last_error = exc
        else:
            if value:
                return value
        time.sleep(every_s)
    pytest.fail(f"timed out waiting for {what} (last error: {last_error})")


@dataclass
class Prometheus:
    """A running Prometheus and a small client for its HTTP API."""

    proc: subprocess.Popen[Any]
    url: str

    def query(self, promql: str) -> list[dict]:
        body = http_get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        doc = json.loads(body)
        assert doc["status"] == "success", doc
        return list(doc["data"]["result"])

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def alerts(self, name: str) -> list[dict]:
        doc = json.loads(http_get(f"{self.url}/api/v1/alerts"))
        return [a for a in doc["data"]["alerts"] if a["labels"]["alertname"] == name]

    def rules(self) -> list[dict]:
        doc = json.loads(http_get(f"{self.url}/api/v1/rules"))
        return [rule for group in doc["data"]["groups"] for rule in group["rules"]]


# -- traffic ---------------------------------------------------------------------------------------
@dataclass
class Traffic:
    """A client thread sending every kind of RPC; ``burst`` switches Score to anomalous rows."""

    target: str
    normal: np.ndarray
    anomalous: np.ndarray
    burst: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)
    #: phase -> (samples sent, samples flagged as anomalies); one tuple, so read consistently.
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    error: BaseException | None = None

    def run(self) -> None:
        from service.client import Client
        from service.errors import InvalidInputError

        try:
            with Client(self.target, timeout_s=10) as client:
                client.wait_ready(30)
                i = 0
                while not self.stopped.is_set():
                    phase = "burst" if self.burst.is_set() else "normal"
                    rows = self.anomalous if phase == "burst" else self.normal
                    start = (i * 20) % (len(rows) - 20)
                    result = client.score(rows[start : start + 20], top_k=2)
                    sent, flagged = self.counts.get(phase, (0, 0))
                    self.counts[phase] = (sent + len(result), flagged + int(result.is_anomaly.sum()))
                    if i % 10 == 0:
                        list(client.score_stream([self.normal[:8], self.normal[8:24]]))
                        client.encode(self.normal[:4])
                        client.model_info()
                        client.list_models()
                        with contextlib.suppress(InvalidInputError):  # a client error, on purpose
                            client.score(self.normal[:3, :5])
                    i += 1
                    time.sleep(0.02)
        except BaseException as exc:  # surfaced by the test
            self.error = exc


# -- the stack -------------------------------------------------------------------------------------
def rules_copy(tmp_path: Path) -> Path:
    """The project's rule files with the e2e test's two overrides (see the module docstring)."""
    out = tmp_path / "rules"
    out.mkdir()
    overridden = set()
    for path in sorted(RULES.glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            group.pop("interval", None)
            for rule in group["rules"]:
                if rule.get("alert") == ALERT:
                    rule["for"] = "2s"
                    overridden.add(ALERT)
        (out / path.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    assert overridden == {ALERT}
    return out


@dataclass
class Stack:
    server: subprocess.Popen[Any]
    grpc_target: str
    metrics_url: str
    prometheus: Prometheus
    traffic: Traffic
    logs: Path


@pytest.fixture(scope="module")
def stack(
    tiny_model_path: Path, tiny_dataset: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("observability")
    procs: list[subprocess.Popen[Any]] = []
    logs = tmp / "logs"
    logs.mkdir()
    thread: threading.Thread | None = None
    traffic: Traffic | None = None
    try:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "service.cli", "serve", "--model", str(tiny_model_path)),
                *("--port", "0", "--metrics-port", "0", "--drift-min-samples", "50", "--processes", "2"),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=(logs / "server.log").open("w"),
            text=True,
        )
        procs.append(server)
        pushgateway_port = free_port()
        pushgateway = subprocess.Popen(
            [
                need("prometheus-pushgateway"),
                f"--web.listen-address=127.0.0.1:{pushgateway_port}",
                f"--persistence.file={tmp / 'pushgateway.data'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(logs / "pushgateway.log").open("w"),
        )
        procs.append(pushgateway)
        with ThreadPoolExecutor(1) as pool:
            line = pool.submit(server.stdout.readline).result(timeout=START_TIMEOUT_S)  # type: ignore[union-attr]
        assert line, f"server exited: {(logs / 'server.log').read_text()[-2000:]}"
        serving = json.loads(line)
        grpc_target = f"127.0.0.1:{serving['port']}"
        metrics_port = serving["metrics_port"]

        prometheus_port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules_copy(tmp) / "*.yml")],
            "scrape_configs": [
                {"job_name": "aeguard", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]},
                {
                    "job_name": "pushgateway",
                    "honor_labels": True,
                    "static_configs": [{"targets": [f"127.0.0.1:{pushgateway_port}"]}],
                },
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom_proc = subprocess.Popen(
            [
                need("prometheus"),
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(logs / "prometheus.log").open("w"),
        )
        procs.append(prom_proc)
        prometheus = Prometheus(prom_proc, f"http://127.0.0.1:{prometheus_port}")

        # Traffic starts now, so counters move by the time Prometheus scrapes.
        normal = tiny_dataset.normal
        anomalous = (normal + 50.0 * normal.std(axis=0)).astype(np.float32)
        traffic = Traffic(grpc_target, normal, anomalous)
        thread = threading.Thread(target=traffic.run, name="traffic", daemon=True)
        thread.start()

        # The real batch job pushes its metrics to the real Pushgateway (the dashboard's batch row),
        # while Prometheus starts.
        wait_for("the Pushgateway", lambda: http_get(f"http://127.0.0.1:{pushgateway_port}/-/ready"))
        job = subprocess.Popen(
            [
                *(sys.executable, "-m", "service.cli", "score", "--model", str(tiny_model_path)),
                *("--input", str(tiny_dataset.csv_path), "--output", str(tmp / "scores.parquet")),
                *("--pushgateway", f"http://127.0.0.1:{pushgateway_port}", "--no-progress"),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=(logs / "batch.log").open("w"),
        )
        procs.append(job)
        assert job.wait(timeout=120) == 0, (logs / "batch.log").read_text()[-2000:]

        yield Stack(
            server, grpc_target, f"http://127.0.0.1:{metrics_port}/metrics", prometheus, traffic, logs
        )
    finally:
        if traffic is not None:
            traffic.stopped.set()
        if thread is not None:
            thread.join(timeout=30)
        for proc in reversed(procs):
            stop_process(proc)


# -- tests -----------------------------------------------------------------------------------------
def test_server_exposes_every_agreed_metric(stack: Stack) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    wait_for("traffic", lambda: "normal" in stack.traffic.counts)
    text = http_get(stack.metrics_url).decode()
    labels: dict[str, set[frozenset[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).add(frozenset(sample.labels))
    missing = set(SERVER_METRICS) - set(labels)
    assert not missing, "metrics the rules and the dashboard read but the server lacks"
    for name, agreed in SERVER_METRICS.items():
        assert labels[name] == {agreed}, f"{name}: labels {labels[name]}, agreed {set(agreed)}"


def test_healthcheck_script_passes_against_the_live_server(stack: Stack) -> None:
    port = stack.grpc_target.rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py")],
        env={"AEGUARD_PORT": port, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_alert_fires_on_an_anomaly_burst_and_every_panel_has_data(stack: Stack) -> None:
    prom, traffic = stack.prometheus, stack.traffic

    # 1. Both targets are scraped.
    for job in ("aeguard", "pushgateway"):
        wait_for(f"up{{job={job!r}}} == 1", lambda job=job: prom.value(f'up{{job="{job}"}}') == 1.0)

    # 2. Normal traffic: once Prometheus has seen a good thousand samples and evaluated the ratio
    #    over them, it is below the alert's level and the alert is not firing.
    ratio_query = 'model:aeguard_anomaly_ratio:rate5m{model_name="tiny"}'
    wait_for(
        "normal traffic in Prometheus and its anomaly ratio",
        lambda: (
            (prom.value("sum(increase(aeguard_samples_scored_total[5m]))") or 0) > 1000
            and prom.value(ratio_query) is not None
        ),
    )
    assert traffic.error is None, traffic.error
    ratio = prom.value(ratio_query)
    sent, flagged = traffic.counts["normal"]
    client_ratio = flagged / sent
    assert ratio is not None and 0 < ratio < NO_HISTORY_LEVEL, (ratio, client_ratio)
    assert client_ratio < NO_HISTORY_LEVEL
    assert not [a for a in prom.alerts(ALERT) if a["state"] == "firing"]

    # 3. A burst of anomalies: the alert fires for the model being scored.
    traffic.burst.set()
    firing = wait_for(
        f"{ALERT} to fire",
        lambda: [a for a in prom.alerts(ALERT) if a["state"] == "firing"],
        timeout_s=ALERT_TIMEOUT_S,
    )
    assert traffic.error is None, traffic.error
    sent, flagged = traffic.counts["burst"]
    assert flagged == sent > 0, "every burst row is an anomaly"
    (alert,) = firing
    assert alert["labels"]["model_name"] == "tiny" and alert["labels"]["severity"] == "warning"
    assert float(alert["value"]) > NO_HISTORY_LEVEL

    # 4. Every project rule was loaded and evaluates without error on real data.
    rules = prom.rules()
    expected = sum(
        len(g["rules"]) for f in RULES.glob("*.yml") for g in yaml.safe_load(f.read_text())["groups"]
    )
    assert len(rules) == expected
    broken = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
    assert not broken, broken

    # 5. Every query of every dashboard panel returns data (at least one finite sample).
    spec = importlib.util.spec_from_file_location("panel_queries", DEPLOY / "grafana" / "panel_queries.py")
    assert spec and spec.loader
    pq = importlib.util.module_from_spec(spec)
    sys.modules["panel_queries"] = pq
    spec.loader.exec_module(pq)
    # Grafana's $__rate_interval for a 1 s scrape.
    # The panels of `aeguard watch`'s scores have data only where watch runs: test_watch_e2e checks them.
    queries = [
        q for q in pq.panel_queries(variables={"__rate_interval": "10s"}) if "aeguard_watch" not in q.expr
    ]
    assert queries
    empty = []
    for q in queries:
        values = [float(r["value"][1]) for r in prom.query(q.expr)]
        if not any(math.isfinite(v) for v in values):
            empty.append(f"{q.panel} [{q.ref_id}]: {q.expr} -> {values}")
    assert not empty, "panels without data:\n" + "\n".join(empty)

    # 6. The server drains and exits cleanly on SIGTERM.
    traffic.stopped.set()
    assert stop_process(stack.server) == 0, (stack.logs / "server.log").read_text()[-2000:]
