"""Columnar results through the real server: the same numbers as per-sample results, in packed columns.

A real gRPC server on 127.0.0.1 port 0 (micro-batching on, so small requests also take the
batcher's path), called with raw stubs and with :class:`service.client.Client`.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from service.client import ColumnarScores, Scores, StreamError
from service.config import ServerConfig
from service.errors import AeguardError, InvalidInputError
from service.model_store import ModelStore
from service.rpc.api import aeguard_pb2 as pb
from service.rpc.server import ServerHandle, build_server

MAX_ROWS = 256
#: A generous bound that only catches a hang; nothing here is timed.
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def server(tiny_model_path) -> Iterator[ServerHandle]:
    store = ModelStore()
    store.load_path(tiny_model_path)
    config = ServerConfig(
        host="127.0.0.1", port=0, metrics_port=0, max_batch_rows=MAX_ROWS, micro_batch_rows=64
    )
    handle = build_server(config, store)
    yield handle
    handle.stop(0)


@pytest.fixture(scope="module")
def rows(tiny_dataset) -> np.ndarray:
    """Normal rows and every anomaly, so all three severities ('none', 'warning', 'critical') appear."""
    return np.concatenate([tiny_dataset.normal[:100], tiny_dataset.anomalies]).astype(np.float32)


def assert_equal(columns: ColumnarScores, per_sample: Scores, feature_names: list[str]) -> None:
    """Every field of the columnar results equals the per-sample one (float32 both ways: exactly)."""
    assert len(columns) == len(per_sample)
    assert (columns.model, columns.model_version) == (per_sample.model, per_sample.model_version)
    np.testing.assert_array_equal(columns.score, per_sample.score)
    np.testing.assert_array_equal(columns.normalized_score, per_sample.normalized_score)
    np.testing.assert_array_equal(columns.is_anomaly, per_sample.is_anomaly)
    assert columns.severity == per_sample.severity
    top = [
        [(feature_names[j], e, s) for j, e, s in zip(idx.tolist(), err.tolist(), share.tolist(), strict=True)]
        for idx, err, share in zip(
            columns.top_feature_indices, columns.top_feature_errors, columns.top_feature_shares, strict=True
        )
    ]
    assert top == per_sample.top_features
    if per_sample.feature_errors is None:
        assert columns.feature_errors is None
    else:
        assert columns.feature_errors is not None
        np.testing.assert_array_equal(columns.feature_errors, per_sample.feature_errors)


@pytest.mark.parametrize(
    ("n_rows", "top_k", "feature_errors"),
    [(140, 0, False), (140, 3, True), (140, 20, False), (5, 0, False), (1, 2, True)],
    ids=["plain", "top3-fe", "top-all", "micro-batched", "one-row"],
)
def test_columnar_score_equals_per_sample(client, rows, tiny_dataset, n_rows, top_k, feature_errors):
    x = rows[-n_rows:]
    per_sample = client.score(x, top_k=top_k, feature_errors=feature_errors)
    columns = client.score(x, top_k=top_k, feature_errors=feature_errors, columnar=True)
    assert isinstance(columns, ColumnarScores)
    assert columns.severity_names == ("none", "warning", "critical")
    assert columns.top_feature_indices.shape == (n_rows, min(top_k, 8))
    assert_equal(columns, per_sample, tiny_dataset.feature_names)
    if n_rows == 140:
        assert set(columns.severity) == {"none", "warning", "critical"}


def test_columnar_response_carries_no_per_sample_results(stub, rows):
    request = pb.ScoreRequest(
        samples=pb.Matrix(rows=3, cols=8, values=rows[:3].ravel().tolist()), columnar=True, request_id="q"
    )
    resp = stub.Score(request, timeout=DEADLINE_S)
    assert resp.request_id == "q" and not resp.results and resp.HasField("columns")
    cols = resp.columns
    assert cols.rows == 3 and len(cols.scores) == len(cols.normalized_scores) == 12
    assert len(cols.is_anomaly) == 3 and len(cols.severity) == 12
    assert cols.top_k == 0 and not cols.top_feature_indices and not cols.HasField("feature_errors")


def test_named_samples_can_ask_for_columns(stub, client, rows, tiny_dataset):
    named = [
        pb.NamedSample(features=dict(zip(tiny_dataset.feature_names, r.tolist(), strict=True)))
        for r in rows[:4]
    ]
    resp = stub.Score(pb.ScoreRequest(named=named, columnar=True), timeout=DEADLINE_S)
    expected = client.score(rows[:4])
    np.testing.assert_array_equal(np.frombuffer(resp.columns.scores, "<f4"), expected.score)


def test_stream_mixes_columnar_and_per_sample_and_keeps_going_after_a_bad_request(client, rows, tiny_dataset):
    chunks = [rows[:60], rows[60:100, :5], rows[100:]]  # the middle one has 5 features, not 8
    per_sample = list(client.score_stream(chunks, top_k=2, feature_errors=True, raise_on_error=False))
    columnar = list(
        client.score_stream(chunks, top_k=2, feature_errors=True, columnar=True, raise_on_error=False)
    )
    assert [type(r) for r in per_sample] == [Scores, StreamError, Scores]
    assert [type(r) for r in columnar] == [ColumnarScores, StreamError, ColumnarScores]
    assert isinstance(columnar[1], StreamError) and isinstance(columnar[1].error, InvalidInputError)
    assert "5 features" in columnar[1].error.message and "expects 8" in columnar[1].error.message
    for c, p in ((columnar[0], per_sample[0]), (columnar[2], per_sample[2])):
        assert isinstance(c, ColumnarScores) and isinstance(p, Scores)
        assert c.request_id == p.request_id
        assert_equal(c, p, tiny_dataset.feature_names)


def test_one_stream_can_switch_form_per_request(stub, rows):
    def request(i: int, columnar: bool) -> pb.ScoreRequest:
        x = rows[10 * i : 10 * i + 10]
        m = pb.Matrix(rows=10, cols=8, raw=x.astype("<f4").tobytes())
        return pb.ScoreRequest(samples=m, columnar=columnar, request_id=str(i))

    responses = list(
        stub.ScoreStream(iter([request(0, True), request(1, False), request(2, True)]), timeout=DEADLINE_S)
    )
    assert [r.request_id for r in responses] == ["0", "1", "2"]
    assert [r.HasField("columns") for r in responses] == [True, False, True]
    assert [len(r.results) for r in responses] == [0, 10, 0]


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"samples": pb.Matrix(rows=2, cols=8, raw=b"\0" * 60)}, "samples: raw holds 60 bytes"),
        ({"samples": pb.Matrix(rows=2, cols=7, values=[0.0] * 14)}, "7 features per row"),
        (
            {"samples": pb.Matrix(rows=1, cols=8, values=[0.0] * 8), "named": [pb.NamedSample()]},
            "either samples or named",
        ),
        ({}, "empty batch"),
    ],
    ids=["raw-length", "width", "samples-and-named", "empty"],
)
def test_bad_columnar_requests_get_invalid_argument_naming_the_field(stub, request_fields, message):
    request = pb.ScoreRequest(columnar=True, top_k=2, feature_errors=True, **request_fields)
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(request, timeout=DEADLINE_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    (resp,) = stub.ScoreStream(iter([request]), timeout=DEADLINE_S)
    assert resp.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and message in resp.error.message
    assert not resp.HasField("columns") and not resp.results


def test_rows_over_the_limit_are_refused_in_columnar_form_too(stub):
    m = pb.Matrix(rows=MAX_ROWS + 1, cols=8, raw=b"\0" * (4 * 8 * (MAX_ROWS + 1)))
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(pb.ScoreRequest(samples=m, columnar=True), timeout=DEADLINE_S)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"limit of {MAX_ROWS}" in info.value.details()


def test_a_server_that_ignores_columnar_is_a_clear_error_not_an_empty_result():
    from service.client import _columnar_scores

    old_server_answer = pb.ScoreResponse(model="tiny", results=[pb.SampleResult(score=1.0)] * 3)
    with pytest.raises(AeguardError, match=r"3 per-sample results instead of columns.*columnar=False"):
        _columnar_scores(old_server_answer, want_fe=False)


def test_malformed_columns_are_named():
    from service.client import _columnar_scores

    cols = pb.ColumnarResults(rows=2, scores=b"\0" * 7, severity=b"\0" * 8, severity_names=["none"])
    with pytest.raises(AeguardError, match=r"columns.scores holds 7 bytes, expected 8"):
        _columnar_scores(pb.ScoreResponse(columns=cols), want_fe=False)
    cols = pb.ColumnarResults(rows=1, severity=b"\5\0\0\0", severity_names=["none"])
    with pytest.raises(AeguardError, match=r"severity index beyond columns\.severity_names"):
        _columnar_scores(pb.ScoreResponse(columns=cols), want_fe=False)
