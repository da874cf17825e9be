"""A Node.js client built from the .proto alone scores against the real server, same as Python.

``tests/node/client.js`` loads ``proto/aeguard/v1/aeguard.proto`` with ``@grpc/proto-loader`` and
calls the server with ``@grpc/grpc-js``: no generated code and nothing from the Python package.
Its answers must equal the Python client's and the in-process scorer's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

NODE_DIR = Path(__file__).parent / "node"
CLIENT_JS = NODE_DIR / "client.js"
NODE = shutil.which("node")
#: float32 scores travel as float32 on the wire; both sides decode the same bits.
RTOL = 1e-6

pytestmark = pytest.mark.skipif(
    NODE is None, reason="node (Node.js) is not installed: no cross-language test"
)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """The client's npm packages; `make test` installs them from the lock file, else we do."""
    modules = NODE_DIR / "node_modules"
    if not (modules / "@grpc" / "grpc-js").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(f"{modules} is missing and npm is not installed; run `npm ci --prefix {NODE_DIR}`")
        subprocess.run(
            [npm, "ci", "--prefix", str(NODE_DIR), "--ignore-scripts", "--no-audit", "--no-fund"],
            check=True,
            timeout=300,
        )
    return modules


@pytest.fixture(scope="module")
def server(tiny_model_path: Path) -> Iterator[Any]:
    """The real aeguard server on 127.0.0.1, an ephemeral port, serving the tiny model."""
    from prometheus_client import CollectorRegistry

    from service.config import ServerConfig
    from service.metrics import Metrics
    from service.model_store import ModelStore
    from service.rpc.server import build_server

    config = ServerConfig(model=str(tiny_model_path), host="127.0.0.1", port=0, metrics_port=0)
    metrics = Metrics(CollectorRegistry())
    store = ModelStore(listeners=[metrics])
    handle = build_server(config, store, metrics)
    store.load_path(config.model)
    assert handle.refresh_health()
    yield handle
    handle.stop(1.0)


@pytest.fixture(scope="module")
def target(server: Any) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def rows(tiny_dataset: Any) -> np.ndarray:
    """Some normal rows and every anomaly, so both verdicts (and several severities) appear."""
    x = np.concatenate([tiny_dataset.normal[:6], tiny_dataset.anomalies])
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def python_scores(target: str, rows: np.ndarray) -> Any:
    from service.client import Client

    with Client(target) as client:
        return client.score(rows, top_k=3, feature_errors=True)


def node(
    node_modules: Path, command: str, target: str, spec: dict[str, Any] | None = None, *options: str
) -> tuple[int, Any]:
    """Run the Node client; return its exit status and the JSON it printed."""
    assert NODE is not None
    proc = subprocess.run(
        [NODE, str(CLIENT_JS), command, target, *options],
        input=json.dumps(spec or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode in (0, 1), f"node client failed ({proc.returncode}): {proc.stderr}"
    return proc.returncode, json.loads(proc.stdout)


def spec(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {"rows": x.astype(np.float64).tolist(), **extra}


def assert_same(results: list[dict[str, Any]], expected: Any, *, with_details: bool) -> None:
    """Node's results equal the Python client's, field by field."""
    assert len(results) == len(expected)
    np.testing.assert_allclose([r["score"] for r in results], expected.score, rtol=RTOL)
    np.testing.assert_allclose([r["normalized_score"] for r in results], expected.normalized_score, rtol=RTOL)
    assert [r["is_anomaly"] for r in results] == expected.is_anomaly.tolist()
    assert [r["severity"] for r in results] == expected.severity
    if with_details:
        for r, top, fe in zip(results, expected.top_features, expected.feature_errors, strict=True):
            assert [t["name"] for t in r["top_features"]] == [name for name, _, _ in top]
            np.testing.assert_allclose(
                [t["share"] for t in r["top_features"]], [s for _, _, s in top], rtol=RTOL
            )
            np.testing.assert_allclose(r["feature_errors"], fe, rtol=RTOL)


@pytest.mark.parametrize("encoding", ["values", "raw", "named"])
def test_node_score_matches_python(
    node_modules: Path,
    target: str,
    rows: np.ndarray,
    python_scores: Any,
    tiny_model_path: Path,
    encoding: str,
) -> None:
    from service.scorer import Scorer

    status, out = node(
        node_modules,
        "score",
        target,
        spec(rows, encoding=encoding, top_k=3, feature_errors=True, request_id="n1"),
    )
    assert status == 0 and out["ok"], out
    response = out["response"]
    assert (response["model"], response["model_version"], response["request_id"]) == ("tiny", "1", "n1")
    assert_same(response["results"], python_scores, with_details=True)
    # ... and both equal the in-process scorer: the numbers are the model's, not the transport's.
    reference = Scorer.load(tiny_model_path).score(rows)
    np.testing.assert_allclose([r["score"] for r in response["results"]], reference.score, rtol=RTOL)
    assert any(r["is_anomaly"] for r in response["results"])
    assert not all(r["is_anomaly"] for r in response["results"])


def test_node_stream_keeps_good_results_around_a_bad_request(
    node_modules: Path, target: str, rows: np.ndarray, python_scores: Any
) -> None:
    first, second = rows[:5], rows[5:]
    requests = [
        spec(first, encoding="raw", request_id="a"),
        spec(first[:, :5], encoding="values", request_id="bad"),  # 5 features, the model has 8
        spec(second, encoding="raw", request_id="b"),
    ]
    status, out = node(node_modules, "stream", target, {"requests": requests})
    assert status == 0 and out["ok"], out
    responses = out["responses"]
    assert [r["request_id"] for r in responses] == ["a", "bad", "b"]
    assert responses[1]["error"]["code"] == 3  # INVALID_ARGUMENT, and the stream went on
    assert "8" in responses[1]["error"]["message"] and responses[1]["results"] == []
    assert responses[0]["error"] is None and responses[2]["error"] is None
    scores = [r["score"] for resp in (responses[0], responses[2]) for r in resp["results"]]
    np.testing.assert_allclose(scores, python_scores.score, rtol=RTOL)


def assert_columns_same(columns: dict[str, Any], expected: Any, feature_names: list[str]) -> None:
    """Columns Node decoded from the bytes equal the Python client's per-sample results."""
    n = len(expected)
    assert columns["rows"] == n
    np.testing.assert_allclose(columns["scores"], expected.score, rtol=RTOL)
    np.testing.assert_allclose(columns["normalized_scores"], expected.normalized_score, rtol=RTOL)
    assert columns["is_anomaly"] == expected.is_anomaly.tolist()
    assert columns["severity_names"] == ["none", "warning", "critical"]
    assert [columns["severity_names"][i] for i in columns["severity"]] == expected.severity
    assert columns["top_k"] == 3
    for i, top in enumerate(expected.top_features):
        assert [feature_names[j] for j in columns["top_feature_indices"][i]] == [name for name, _, _ in top]
        np.testing.assert_allclose(columns["top_feature_errors"][i], [e for _, e, _ in top], rtol=RTOL)
        np.testing.assert_allclose(columns["top_feature_shares"][i], [s for _, _, s in top], rtol=RTOL)
    np.testing.assert_allclose(columns["feature_errors"], expected.feature_errors, rtol=RTOL)


@pytest.mark.parametrize("encoding", ["raw", "named"])
def test_node_reads_columnar_results_equal_to_per_sample_ones(
    node_modules: Path, target: str, rows: np.ndarray, python_scores: Any, tiny_dataset: Any, encoding: str
) -> None:
    extra = {"encoding": encoding, "top_k": 3, "feature_errors": True, "columnar": True}
    status, out = node(node_modules, "score", target, spec(rows, request_id="c1", **extra))
    assert status == 0 and out["ok"], out
    response = out["response"]
    assert response["request_id"] == "c1" and response["results"] == []
    assert_columns_same(response["columns"], python_scores, tiny_dataset.feature_names)
    assert any(response["columns"]["is_anomaly"]) and not all(response["columns"]["is_anomaly"])

    # Over a stream too, next to a per-sample request, split in two.
    first, second = rows[:5], rows[5:]
    requests = [
        spec(first, request_id="a", **extra),
        spec(second, request_id="b", **{**extra, "columnar": False}),
    ]
    status, out = node(node_modules, "stream", target, {"requests": requests})
    assert status == 0 and out["ok"], out
    a, b = out["responses"]
    assert a["results"] == [] and a["columns"]["rows"] == 5
    assert b["columns"] is None and len(b["results"]) == len(second)
    np.testing.assert_allclose(
        a["columns"]["scores"] + [r["score"] for r in b["results"]], python_scores.score, rtol=RTOL
    )


def test_node_sees_error_statuses(node_modules: Path, target: str, rows: np.ndarray) -> None:
    status, out = node(node_modules, "score", target, spec(rows[:2, :7]))
    assert status == 1 and not out["ok"]
    assert out["error"]["code_name"] == "INVALID_ARGUMENT"
    assert "7" in out["error"]["details"] and "8" in out["error"]["details"]

    status, out = node(node_modules, "score", target, spec(rows[:2], model="no-such-model"))
    assert status == 1 and out["error"]["code_name"] == "NOT_FOUND"
    assert "no-such-model" in out["error"]["details"]

    # The server keeps serving after errors.
    status, out = node(node_modules, "score", target, spec(rows[:1]))
    assert status == 0 and len(out["response"]["results"]) == 1


def test_node_reads_model_info(node_modules: Path, target: str) -> None:
    status, out = node(node_modules, "info", target)
    assert status == 0, out
    info = out["response"]
    assert info["name"] == "tiny" and info["feature_names"] == [f"f{i}" for i in range(8)]
    assert [t["name"] for t in info["thresholds"]] == ["warning", "critical"]


def test_node_client_speaks_mutual_tls_with_a_token(node_modules, tiny_model_path, rows, tmp_path):
    from tls_support import make_pki

    from service.config import ServerConfig
    from service.model_store import ModelStore
    from service.rpc.server import build_server

    pki = make_pki(tmp_path / "pki")
    tokens, token = tmp_path / "tokens", tmp_path / "token"
    tokens.write_text("node-test:a-token-for-the-node-client-0123\n")
    token.write_text("a-token-for-the-node-client-0123\n")
    store = ModelStore()
    store.load_path(tiny_model_path)
    config = ServerConfig(
        port=0,
        metrics_port=0,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
        auth_tokens_file=str(tokens),
    )
    handle = build_server(config, store)
    try:
        target = f"localhost:{handle.port}"
        tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
        code, out = node(
            node_modules, "score", target, spec(rows[:3], columnar=True), *tls, "--token-file", str(token)
        )
        assert code == 0 and out["response"]["columns"]["rows"] == 3
        code, out = node(node_modules, "score", target, spec(rows[:1]), *tls)  # no token
        assert code == 1 and out["error"]["code_name"] == "UNAUTHENTICATED"
        code, out = node(
            node_modules, "info", target, None, "--tls-ca", str(pki.ca), "--token-file", str(token)
        )
        assert code == 1 and out["error"]["code_name"] == "UNAVAILABLE"  # no client certificate under mTLS
    finally:
        handle.stop(0)


def test_node_streams_a_windowed_series_one_row_per_message(node_modules, windowed_model_path):
    """ScoreRequest.series and timestamps from the .proto alone: one row per message continues the
    series; the scores equal the Python client's one call; warm-up rows are marked in both forms."""
    from window_support import series_values

    from service.client import Client
    from service.config import ServerConfig
    from service.model_store import ModelStore
    from service.rpc.server import build_server

    store = ModelStore()
    store.load_path(windowed_model_path)
    handle = build_server(ServerConfig(host="127.0.0.1", port=0, metrics_port=0), store)
    try:
        target = f"127.0.0.1:{handle.port}"
        x = series_values(12, 3, phase=0.0, seed=5)
        times = (1_700_000_000.0 + np.arange(12)).tolist()
        requests = [
            spec(x[i : i + 1], series="h0", timestamps=times[i : i + 1], columnar=bool(i % 2))
            for i in range(len(x))
        ]
        status, out = node(node_modules, "stream", target, {"requests": requests})
        assert status == 0 and out["ok"], out
        warm, scores = [], []
        for i, response in enumerate(out["responses"]):
            if i % 2:
                warm.append(response["columns"]["warm_up"][0])
                scores.append(response["columns"]["scores"][0])  # NaN (null) while warming up
            else:
                warm.append(response["results"][0]["warm_up"])
                scores.append(response["results"][0]["score"])
        assert warm == [True] * 4 + [False] * 8
        with Client(target) as client:
            expected = client.score(x, timestamps=times)
        np.testing.assert_allclose(scores[4:], expected.score[4:], rtol=RTOL)
    finally:
        handle.stop(0)
