"""A tiny Prometheus HTTP API on 127.0.0.1 for the watch tests: real sockets, answers we control.

It speaks ``/api/v1/query`` and ``/api/v1/query_range`` as Prometheus does (form POST, JSON with
``status``/``data``/``resultType``; HTTP 400 ``bad_data`` past 11,000 points per series), for
queries that are simply a feature name. Each instance's value of feature ``j`` at time ``t`` is
row ``(t / step + offset) % n`` of a matrix of normal rows. Tests switch on failures, delays,
missing features, NaN values and auth, and read the requests it received.
"""

from __future__ import annotations

import base64
import json
import math
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


@dataclass
class FakeState:
    rows: np.ndarray  # [n, d] normal values
    features: list[str]
    instances: list[str]
    step_s: float = 10.0
    fail_next: int = 0  # the next N requests get HTTP 503
    fail_status: int = 503
    delay_s: float = 0.0
    missing: dict[str, set[str]] = field(default_factory=dict)  # feature -> instances without it
    nan: dict[str, set[str]] = field(default_factory=dict)  # feature -> instances whose value is NaN
    duplicated: set[str] = field(default_factory=set)  # features returned twice for the first instance
    anomalous: dict[str, float] = field(default_factory=dict)  # instance -> factor applied to feature 0
    require_auth: str = ""  # the exact Authorization header required, if any
    requests: list[dict] = field(default_factory=list)

    def value(self, feature: str, instance: str, t: float) -> float:
        j = self.features.index(feature)
        i = (round(t / self.step_s) + 97 * self.instances.index(instance)) % len(self.rows)
        v = float(self.rows[i, j])
        if instance in self.nan.get(feature, set()):
            return math.nan
        if j == 0 and instance in self.anomalous:
            v *= self.anomalous[instance]
        return v


class _Handler(BaseHTTPRequestHandler):
    state: FakeState

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        params = {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(length).decode()).items()}
        st = self.state
        st.requests.append(
            {"path": self.path, "params": params, "auth": self.headers.get("Authorization", "")}
        )
        if st.delay_s:
            time.sleep(st.delay_s)
        if st.require_auth and self.headers.get("Authorization") != st.require_auth:
            return self._send(401, {"status": "error", "errorType": "unauthorized", "error": "no"})
        if st.fail_next > 0:
            st.fail_next -= 1
            return self._send(
                st.fail_status, {"status": "error", "errorType": "unavailable", "error": "down"}
            )
        query = params.get("query", "")
        if query not in st.features:
            return self._send(
                400, {"status": "error", "errorType": "bad_data", "error": f"parse error: {query}"}
            )
        if self.path == "/api/v1/query":
            at = float(params["time"])
            result = [
                {"metric": m, "value": [at, _fmt(st.value(query, inst, at))]}
                for inst, m in self._series(query)
            ]
            return self._send(200, {"status": "success", "data": {"resultType": "vector", "result": result}})
        start, end, step = float(params["start"]), float(params["end"]), float(params["step"])
        points = math.floor((end - start) / step) + 1
        if points > 11_000:
            return self._send(
                400,
                {
                    "status": "error",
                    "errorType": "bad_data",
                    "error": "exceeded maximum resolution of 11,000 points",
                },
            )
        times = start + step * np.arange(points)
        result = [
            {"metric": m, "values": [[float(t), _fmt(st.value(query, inst, float(t)))] for t in times]}
            for inst, m in self._series(query)
        ]
        return self._send(200, {"status": "success", "data": {"resultType": "matrix", "result": result}})

    def _series(self, query: str) -> list[tuple[str, dict[str, str]]]:
        st = self.state
        out = [
            (inst, {"instance": inst, "job": "fake"})
            for inst in st.instances
            if inst not in st.missing.get(query, set())
        ]
        if query in st.duplicated:
            out.append((st.instances[0], {"instance": st.instances[0], "job": "other"}))
        return out

    def _send(self, status: int, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _fmt(v: float) -> str:
    return "NaN" if math.isnan(v) else repr(v)


class FakePrometheus:
    """Start with ``with FakePrometheus(state) as prom:``; ``prom.url`` is its base URL."""

    def __init__(self, state: FakeState, tls: tuple[str, str] | None = None) -> None:
        self.state = state
        handler = type("Handler", (_Handler,), {"state": state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        scheme = "http"
        if tls is not None:  # (certificate, key) PEM files
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakePrometheus:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- the real Prometheus (Debian's package) --------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_openmetrics(path, families: dict[str, list[tuple[dict[str, str], np.ndarray, np.ndarray]]]) -> None:
    """Gauge families ``{name: [(labels, timestamps_s, values), ...]}`` as an OpenMetrics file for
    ``promtool tsdb create-blocks-from openmetrics`` (samples grouped per family, then ``# EOF``)."""
    with open(path, "w") as fh:
        for name, series in families.items():
            fh.write(f"# TYPE {name} gauge\n")
            for labels, ts, values in series:
                text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
                fh.writelines(f"{name}{{{text}}} {v:.6g} {int(t)}\n" for t, v in zip(ts, values, strict=True))
        fh.write("# EOF\n")


def backfill(openmetrics, data_dir) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (make system-deps)"
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", str(openmetrics), str(data_dir)],
        check=True,
        capture_output=True,
        timeout=300,
    )


def start_prometheus(config_path, data_dir, port: int, log_path):
    """Start Prometheus on 127.0.0.1:``port``, retention long enough for backfilled history."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed (make system-deps)"
    return subprocess.Popen(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={data_dir}",
            "--storage.tsdb.retention.time=3650d",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(log_path, "a"),
    )


def wait_ready(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready within {timeout_s} s")


def write_windowed_model(path, rows: np.ndarray, features: list[str], step_s: float, size: int) -> None:
    """A small, real windowed model (``[batch, W, d]`` in) written with onnx's helpers, trained from
    Prometheus as far as its metadata says: the score of a window is the mean squared z-score of its
    rows (z from ``rows``' mean and spread), the feature errors that per feature; 1.0 at a z of 3."""
    import onnx
    from onnx import TensorProto, helper

    from service.artifact import METADATA_KEY, ModelMetadata, ScoreDistribution, Threshold
    from service.watch.spec import source_entry

    d = len(features)
    mu = rows.mean(axis=0).astype(np.float32)
    sd = (rows.std(axis=0) + 1e-6).astype(np.float32)
    nodes = [
        helper.make_node("Sub", ["x", "mu"], ["centred"]),
        helper.make_node("Div", ["centred", "sd"], ["z"]),
        helper.make_node("Mul", ["z", "z"], ["squared"]),
        helper.make_node("ReduceMean", ["squared"], ["feature_errors"], axes=[1], keepdims=0),
        helper.make_node("ReduceMean", ["feature_errors"], ["score"], axes=[1], keepdims=0),
        helper.make_node("ReduceMean", ["z"], ["codes"], axes=[2], keepdims=0),
        helper.make_node("Gather", ["x", "last"], ["reconstruction"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "windowed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", size, d])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("feature_errors", TensorProto.FLOAT, ["batch", d]),
            helper.make_tensor_value_info("codes", TensorProto.FLOAT, ["batch", size]),
            helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, ["batch", d]),
        ],
        [
            helper.make_tensor("mu", TensorProto.FLOAT, [d], mu.tolist()),
            helper.make_tensor("sd", TensorProto.FLOAT, [d], sd.tolist()),
            helper.make_tensor("last", TensorProto.INT64, [], [size - 1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = ModelMetadata(
        name="windowed",
        version="1",
        feature_names=list(features),
        coding_size=size,
        thresholds=[Threshold("warning", 9.0, "fixed", 9.0)],
        score_distribution=ScoreDistribution([0.5, 0.99], [1.0, 3.0]),
        training={"prometheus": source_entry({f: f for f in features}, step_s, ["instance"], 0.0, 1.0)},
        window={"size": size, "step": step_s, "max_gap": 1.5, "series_column": "instance"},
    )
    helper.set_model_props(model, {METADATA_KEY: meta.to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
