"""`aeguard train --prometheus` then `aeguard watch` against the real Prometheus (slow tier).

A small exporter replays the built-in telemetry simulator for four instances, one row per second;
half an hour of history before it is backfilled with promtool. The model learns from that history,
`watch` scores live every 2 s, and Prometheus scrapes `watch` (``honor_labels: true``). At a known
time one instance's latencies go 5x (a latency spike). Every check reads Prometheus itself:

- the faulty instance's ``aeguard_watch_normalized_score`` reaches 1.0 within 3 intervals (6 s),
  counted from the first scrape that saw the fault;
- the healthy instances stay below 1.0 for the whole run;
- Prometheus is stopped and started again: `watch` lives on, counts the failures, and scores again.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from serve_support import stop_process
from watch_support import backfill, free_port, start_prometheus, wait_ready, write_openmetrics

from training.data.simulator import FEATURES, SimulatorConfig, simulate_telemetry

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
INSTANCES = ["web-0", "web-1", "web-2", "web-3"]
FAULTY = "web-2"
HISTORY_S = 30 * 60
INTERVAL_S = 2.0
#: The faulty instance must reach 1.0 within this many watch intervals of the fault reaching Prometheus.
WITHIN_INTERVALS = 3
LATENCIES = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms")


class Replay:
    """Each instance's simulated telemetry, one row per wall-clock second, looping; faults on request."""

    def __init__(self, start_s: int) -> None:
        self.start_s = start_s
        config = SimulatorConfig(days=HISTORY_S * 120 / 86400, step_s=120, episodes_per_day=0)
        self.rows = {
            inst: simulate_telemetry(SimulatorConfig(**{**config.__dict__, "seed": k})).x.astype(np.float64)
            for k, inst in enumerate(INSTANCES)
        }
        self.fault_from_s = math.inf

    def values(self, instance: str, t_s: np.ndarray) -> np.ndarray:
        rows = self.rows[instance]
        x = rows[((t_s - self.start_s) % len(rows)).astype(int)].copy()
        if instance == FAULTY:
            hit = t_s >= self.fault_from_s
            for name in LATENCIES:
                x[hit, FEATURES.index(name)] *= 5.0
        return x


def _exporter(replay: Replay) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            now = np.array([float(int(time.time()))])
            lines = []
            for j, name in enumerate(FEATURES):
                lines.append(f"# TYPE sim_{name} gauge")
                lines += [
                    f'sim_{name}{{instance="{i}"}} {replay.values(i, now)[0, j]:.6g}' for i in INSTANCES
                ]
            body = ("\n".join(lines) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _get(url: str, params: dict[str, str]) -> list[dict]:
    with urllib.request.urlopen(url + "?" + urllib.parse.urlencode(params), timeout=10) as resp:
        doc = json.loads(resp.read())
    assert doc["status"] == "success", doc
    return list(doc["data"]["result"])


def test_train_and_watch_against_real_prometheus(tmp_path: Path) -> None:
    now = int(time.time())
    history_end = now - 90  # the newest backfilled sample a minute or more in the past
    history_start = history_end - HISTORY_S
    replay = Replay(history_start)
    stamps = np.arange(history_start, history_end + 1, dtype=np.int64)
    families = {
        f"sim_{name}": [
            ({"instance": i, "job": "sim"}, stamps, replay.values(i, stamps.astype(float))[:, j])
            for i in INSTANCES
        ]
        for j, name in enumerate(FEATURES)
    }
    data_dir = tmp_path / "tsdb"
    write_openmetrics(tmp_path / "history.om", families)
    backfill(tmp_path / "history.om", data_dir)

    exporter = _exporter(replay)
    watch_port, prom_port = free_port(), free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "sim",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{exporter.server_address[1]}"]}],
            },
            {
                "job_name": "aeguard-watch",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{watch_port}"]}],
            },
        ],
    }
    config["rule_files"] = [str(_rules_copy(tmp_path) / "*.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom_url = f"http://127.0.0.1:{prom_port}"
    log = tmp_path / "prometheus.log"
    procs: list[subprocess.Popen] = []
    try:
        prom = start_prometheus(tmp_path / "prometheus.yml", data_dir, prom_port, log)
        procs.append(prom)
        wait_ready(prom_url)
        model = tmp_path / "models" / "web.onnx"
        train = [sys.executable, "-m", "service.cli", "train", "--prometheus", prom_url, "--step", "1s"]
        train += [a for f in FEATURES for a in ("--query", f"{f}=sim_{f}")]
        train += ["--start", str(history_start), "--end", str(history_end), "--group-by", "instance"]
        train += ["--out", str(model), "--name", "web", "--save-data", str(tmp_path / "history.parquet")]
        train += ["--max-epochs", "40", "--crossfit-folds", "0", "--no-progress"]
        train += ["--threshold", "warning=q0.999", "--threshold", "critical=q0.9999"]
        done = subprocess.run(train, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr

        watch_log = (tmp_path / "watch.log").open("w")
        argv = [
            sys.executable,
            "-m",
            "service.cli",
            "watch",
            "--prometheus",
            prom_url,
            "--model",
            str(model.parent),
        ]
        argv += [
            "--interval",
            f"{INTERVAL_S:g}s",
            "--metrics-port",
            str(watch_port),
            "--retry-backoff",
            "200ms",
        ]
        watch = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=watch_log,
            stderr=subprocess.STDOUT,
        )
        procs.append(watch)
        _ALIVE[:] = [watch]
        query = f"{prom_url}/api/v1/query"
        _wait(
            "scores of every instance in Prometheus",
            lambda: len(_get(query, {"query": "aeguard_watch_normalized_score"})) == 4,
        )
        time.sleep(6 * INTERVAL_S)  # some healthy history of scores
        replay.fault_from_s = float(int(time.time()) + 1)
        _wait(
            "the faulty instance's score >= 1 in Prometheus",
            lambda: _get(query, {"query": f'aeguard_watch_normalized_score{{instance="{FAULTY}"}} >= 1'}),
            timeout_s=60,
        )
        time.sleep(4 * INTERVAL_S)
        _check_scores(prom_url, replay.fault_from_s)
        _check_watch_panels(query)
        _restart_prometheus(prom, procs, tmp_path, data_dir, prom_port, log, watch, watch_port)
        assert watch.poll() is None
        assert stop_process(watch) == 0
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        exporter.shutdown()
        exporter.server_close()


def _rules_copy(tmp_path: Path) -> Path:
    """The project's rule files, evaluated at the global 1 s interval (groups may set a longer one)."""
    out = tmp_path / "rules"
    out.mkdir()
    for path in sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            group.pop("interval", None)
        (out / path.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def _check_watch_panels(query_url: str) -> None:
    """Every dashboard query on watch's series (the panel of a metric beside its score, the recording
    rules' panels) returns data from this Prometheus (test_observability_e2e checks the others)."""
    spec = importlib.util.spec_from_file_location(
        "panel_queries", ROOT / "deploy" / "grafana" / "panel_queries.py"
    )
    assert spec and spec.loader
    pq = importlib.util.module_from_spec(spec)
    sys.modules["panel_queries"] = pq
    spec.loader.exec_module(pq)
    queries = [q for q in pq.panel_queries(variables={"__rate_interval": "10s"}) if "aeguard_watch" in q.expr]
    assert queries
    for q in queries:
        _wait(
            f"data for panel {q.panel} [{q.ref_id}]: {q.expr}",
            lambda q=q: bool(_get(query_url, {"query": q.expr})),
        )


#: Processes that must stay up while a test waits (a dead one fails the wait at once).
_ALIVE: list[subprocess.Popen] = []


def _wait(what: str, check, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in _ALIVE), "aeguard watch or Prometheus exited"
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}")


def _check_scores(prom_url: str, fault_s: float) -> None:
    """Read the run back from Prometheus: when the fault was first scraped, when the score crossed 1."""
    qr = f"{prom_url}/api/v1/query_range"
    end = time.time()
    window = {"start": str(fault_s - 30), "end": str(end), "step": "0.5"}
    seen = _get(qr, {"query": f'sim_latency_p50_ms{{instance="{FAULTY}"}}', **window})[0]["values"]
    faulty = _get(qr, {"query": f'aeguard_watch_normalized_score{{instance="{FAULTY}"}}', **window})[0][
        "values"
    ]
    # The first scrape holding a 5x latency (the replayed row's own value jumps by 5x).
    baseline = np.median([float(v) for t, v in seen if t < fault_s - 2])
    scraped = min(t for t, v in seen if t >= fault_s and float(v) > 2.5 * baseline)
    crossed = min(t for t, v in faulty if float(v) >= 1.0)
    before = [float(v) for t, v in faulty if t < scraped]
    assert before and max(before) < 1.0, before
    delay = crossed - scraped
    print(
        f"fault scraped at +{scraped - fault_s:.1f} s, score >= 1 at +{crossed - fault_s:.1f} s "
        f"({delay:.1f} s later)"
    )
    assert delay <= WITHIN_INTERVALS * INTERVAL_S, delay
    healthy = _get(
        f"{prom_url}/api/v1/query",
        {"query": f'max_over_time(aeguard_watch_normalized_score{{instance!="{FAULTY}"}}[10m])'},
    )
    assert len(healthy) == 3
    highest = {r["metric"]["instance"]: float(r["value"][1]) for r in healthy}
    print(f"healthy instances' highest normalized score over the run: {highest}")
    assert all(v < 1.0 for v in highest.values()), highest


def _restart_prometheus(prom, procs, tmp_path, data_dir, port, log, watch, watch_port) -> None:
    """Stop Prometheus for a few watch intervals, then start it again on the same data and port."""
    metrics_url = f"http://127.0.0.1:{watch_port}/metrics"

    def failures() -> float:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        return sum(s.value for s in fams["aeguard_watch_model_failures"].samples if s.name.endswith("_total"))

    assert failures() == 0
    assert stop_process(prom) == 0
    procs.remove(prom)
    _wait("watch to count Prometheus failures", lambda: failures() >= 2, timeout_s=60)
    assert watch.poll() is None, "watch died while Prometheus was down"
    restarted_at = time.time()
    procs.append(start_prometheus(tmp_path / "prometheus.yml", data_dir, port, log))
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    _wait(
        "a successful cycle after the restart, seen in Prometheus",
        lambda: _get(
            f"{url}/api/v1/query", {"query": f"aeguard_watch_last_success_timestamp_seconds > {restarted_at}"}
        ),
        timeout_s=90,
    )
    counted = _get(f"{url}/api/v1/query", {"query": "sum(aeguard_watch_model_failures_total)"})
    assert counted and float(counted[0]["value"][1]) >= 2
    assert len(_get(f"{url}/api/v1/query", {"query": "aeguard_watch_normalized_score"})) == 4
