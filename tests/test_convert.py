"""Unit tests of the pb <-> numpy converters (service/rpc/convert.py): no sockets, no servicer."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import InvalidInputError, LimitExceededError
from service.model_store import LoadedModel, ModelStore
from service.rpc import convert
from service.rpc.api import aeguard_pb2 as pb

NAMES = [f"f{i}" for i in range(8)]


@pytest.fixture(scope="module")
def model(tiny_model_path) -> LoadedModel:
    return ModelStore().load_file(tiny_model_path)


def test_values_and_raw_give_the_same_array():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    by_values = convert.matrix_to_array(pb.Matrix(rows=2, cols=3, values=x.ravel().tolist()), 10)
    by_raw = convert.matrix_to_array(pb.Matrix(rows=2, cols=3, raw=x.astype("<f4").tobytes()), 10)
    assert by_values.dtype == by_raw.dtype == np.float32
    np.testing.assert_array_equal(by_values, x)
    np.testing.assert_array_equal(by_raw, x)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (pb.Matrix(rows=1, cols=2, values=[1, 2], raw=b"\0" * 8), "either values or raw, not both"),
        (pb.Matrix(rows=1, cols=2), "neither values nor raw"),
        (pb.Matrix(rows=2, cols=2, values=[1, 2, 3]), r"3 values, but rows\*cols = 2\*2 = 4"),
        (pb.Matrix(rows=1, cols=2, raw=b"\0" * 7), "raw holds 7 bytes.*need 8 bytes"),
        (pb.Matrix(rows=0, cols=8), "empty batch"),
        (pb.Matrix(rows=1, cols=0, values=[1.0]), "cols = 0"),
    ],
)
def test_matrix_problems_are_named(matrix, message):
    with pytest.raises(InvalidInputError, match=message):
        convert.matrix_to_array(matrix, 10)


def test_rows_over_the_limit_name_the_limit():
    with pytest.raises(LimitExceededError, match="11 rows exceed this server's limit of 10"):
        convert.matrix_to_array(pb.Matrix(rows=11, cols=1, values=[0.0] * 11), 10)
    named = [pb.NamedSample(features=dict.fromkeys(NAMES, 0.0))] * 3
    with pytest.raises(LimitExceededError, match="limit of 2"):
        convert.named_to_array(named, NAMES, 2)


def test_named_samples_follow_the_model_feature_order():
    named = [pb.NamedSample(features={n: float(i) for i, n in enumerate(reversed(NAMES))})]
    x = convert.named_to_array(named, NAMES, 10)
    assert x.tolist() == [[7, 6, 5, 4, 3, 2, 1, 0]]


def test_named_unknown_and_missing_features_are_named():
    features = dict.fromkeys(NAMES[:-1], 1.0) | {"bogus": 1.0}
    named = [pb.NamedSample(features=dict.fromkeys(NAMES, 0.0)), pb.NamedSample(features=features)]
    with pytest.raises(
        InvalidInputError, match=r"named sample 1: unknown feature\(s\) bogus; missing feature\(s\) f7"
    ):
        convert.named_to_array(named, NAMES, 10)


def test_request_rows_needs_exactly_one_form(model):
    both = pb.ScoreRequest(
        samples=pb.Matrix(rows=1, cols=8, values=[0] * 8), named=[pb.NamedSample(features={"f0": 1})]
    )
    with pytest.raises(InvalidInputError, match="either samples or named, not both"):
        convert.request_rows(both, model, 10)
    with pytest.raises(InvalidInputError, match="empty batch"):
        convert.request_rows(pb.ScoreRequest(), model, 10)
    named = pb.ScoreRequest(named=[pb.NamedSample(features=dict.fromkeys(NAMES, 2.0))])
    assert convert.request_rows(named, model, 10).shape == (1, 8)


def test_score_response_carries_results_in_order(model, tiny_dataset):
    x = tiny_dataset.X[:5]
    batch = model.scorer.score(x, with_feature_errors=True)
    request = pb.ScoreRequest(top_k=3, feature_errors=True, request_id="r1")
    resp = convert.score_response(request, model, batch)
    assert (resp.model, resp.model_version, resp.request_id) == ("tiny", "1", "r1")
    assert len(resp.results) == 5
    for i, r in enumerate(resp.results):
        assert r.score == pytest.approx(float(batch.score[i]))
        assert r.normalized_score == pytest.approx(float(batch.normalized_score[i]))
        assert r.severity == model.severity_names[batch.severity_level[i]]
        assert r.is_anomaly == bool(batch.is_anomaly[i])
        assert len(r.top_features) == 3
        errors = [f.error for f in r.top_features]
        assert errors == sorted(errors, reverse=True)
        assert r.top_features[0].error == pytest.approx(float(batch.feature_errors[i].max()))
        assert sum(f.share for f in r.top_features) <= 1.0 + 1e-6
        assert list(r.feature_errors) == pytest.approx(batch.feature_errors[i].tolist())


def test_score_response_without_extras(model, tiny_dataset):
    batch = model.scorer.score(tiny_dataset.X[:2])
    resp = convert.score_response(pb.ScoreRequest(), model, batch)
    assert all(not r.top_features and not r.feature_errors for r in resp.results)


def test_encode_response_values_and_raw(model):
    codes = np.array([[1.5, -2.0], [0.25, 3.0]], dtype=np.float32)
    by_values = convert.encode_response(model, codes, raw_output=False).codes
    assert (by_values.rows, by_values.cols, list(by_values.values)) == (2, 2, [1.5, -2.0, 0.25, 3.0])
    by_raw = convert.encode_response(model, codes, raw_output=True).codes
    np.testing.assert_array_equal(np.frombuffer(by_raw.raw, "<f4").reshape(2, 2), codes)


def test_model_info_describes_the_model(model):
    info = convert.model_info(model, is_default=True)
    meta = model.metadata
    assert info.name == "tiny" and info.version == "1" and info.is_default
    assert list(info.feature_names) == NAMES
    assert info.coding_size == meta.coding_size == 2
    assert [(t.name, t.value) for t in info.thresholds] == [(t.name, t.value) for t in meta.thresholds]
    assert list(info.score_distribution.values) == meta.score_distribution.values
    assert info.schema_version == meta.schema_version
    assert info.load_duration_s == model.load_duration_s > 0


def rows_of_every_severity(model, tiny_dataset, per_level: int = 20) -> np.ndarray:
    """Up to ``per_level`` rows at each severity (none, warning, critical), whatever the thresholds."""
    levels = model.scorer.score(tiny_dataset.X).severity_level
    picks = [np.flatnonzero(levels == level)[:per_level] for level in range(3)]
    return tiny_dataset.X[np.concatenate(picks)]


def test_large_plain_responses_equal_results_built_field_by_field(model, tiny_dataset):
    x = rows_of_every_severity(model, tiny_dataset)
    batch = model.scorer.score(x)
    assert len(set(batch.severity_level.tolist())) == 3  # none, warning and critical all present
    resp = convert.score_response(pb.ScoreRequest(request_id="big"), model, batch)
    expected = pb.ScoreResponse(
        model="tiny",
        model_version="1",
        request_id="big",
        results=[
            pb.SampleResult(
                score=float(batch.score[i]),
                normalized_score=float(batch.normalized_score[i]),
                is_anomaly=bool(batch.is_anomaly[i]),
                severity=model.severity_names[batch.severity_level[i]],
            )
            for i in range(len(x))
        ],
    )
    assert resp == expected
    assert resp.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


def columns_as_arrays(cols: pb.ColumnarResults) -> dict[str, np.ndarray]:
    """The columns of a ColumnarResults as numpy arrays, read the way the proto documents them."""
    n, k = cols.rows, cols.top_k
    return {
        "score": np.frombuffer(cols.scores, "<f4"),
        "normalized_score": np.frombuffer(cols.normalized_scores, "<f4"),
        "is_anomaly": np.frombuffer(cols.is_anomaly, "u1"),
        "severity": np.frombuffer(cols.severity, "<u4"),
        "top_indices": np.frombuffer(cols.top_feature_indices, "<u4").reshape(n, k),
        "top_errors": np.frombuffer(cols.top_feature_errors, "<f4").reshape(n, k),
        "top_shares": np.frombuffer(cols.top_feature_shares, "<f4").reshape(n, k),
    }


@pytest.mark.parametrize(
    ("top_k", "feature_errors"), [(0, False), (3, True), (3, False), (0, True), (99, True)]
)
def test_columnar_response_equals_the_per_sample_one(model, tiny_dataset, top_k, feature_errors):
    x = rows_of_every_severity(model, tiny_dataset)
    batch = model.scorer.score(x, with_feature_errors=bool(top_k or feature_errors))
    assert len(set(batch.severity_level.tolist())) == 3  # none, warning and critical all present
    fields = {"top_k": top_k, "feature_errors": feature_errors, "request_id": "c1"}
    per_sample = convert.score_response(pb.ScoreRequest(**fields), model, batch)
    resp = convert.score_response(pb.ScoreRequest(columnar=True, **fields), model, batch)
    assert (resp.model, resp.model_version, resp.request_id) == ("tiny", "1", "c1")
    assert not resp.results and resp.HasField("columns") and not resp.HasField("error")
    cols = resp.columns
    c = columns_as_arrays(cols)
    n = len(x)
    assert cols.rows == n and list(cols.severity_names) == ["none", "warning", "critical"]
    results = per_sample.results
    # float32 on both wires: the same bits, so exact equality.
    np.testing.assert_array_equal(c["score"], [r.score for r in results])
    np.testing.assert_array_equal(c["normalized_score"], [r.normalized_score for r in results])
    assert c["is_anomaly"].tolist() == [int(r.is_anomaly) for r in results]
    assert [cols.severity_names[s] for s in c["severity"]] == [r.severity for r in results]
    assert cols.top_k == min(top_k, 8)
    names = model.metadata.feature_names
    for i, r in enumerate(results):
        assert [names[j] for j in c["top_indices"][i]] == [f.name for f in r.top_features]
        assert c["top_errors"][i].tolist() == [f.error for f in r.top_features]
        assert c["top_shares"][i].tolist() == [f.share for f in r.top_features]
    if feature_errors:
        fe = cols.feature_errors
        assert (fe.rows, fe.cols, len(fe.values)) == (n, 8, 0)
        matrix = np.frombuffer(fe.raw, "<f4").reshape(n, 8)
        np.testing.assert_array_equal(matrix, [list(r.feature_errors) for r in results])
    else:
        assert not cols.HasField("feature_errors")


def test_top_feature_columns_break_ties_by_feature_order_and_share_zero_totals():
    fe = np.array([[1.0, 3.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    indices, errors, shares = convert.top_feature_columns(fe, 3)
    assert indices.tolist() == [[1, 2, 0], [0, 1, 2]]
    assert errors.tolist() == [[3.0, 3.0, 1.0], [0.0, 0.0, 0.0]]
    np.testing.assert_allclose(shares, [[3 / 7, 3 / 7, 1 / 7], [0.0, 0.0, 0.0]])
    assert convert.top_feature_columns(fe, 10)[0].shape == (2, 4)  # k above the width: every feature


def test_per_sample_top_features_equal_the_scorers_definition(model, tiny_dataset):
    # The batch job ranks features with service.scorer.top_features; the wire must say the same.
    from service.scorer import top_features

    batch = model.scorer.score(tiny_dataset.X[:200], with_feature_errors=True)
    for k in (1, 3, 8, 50):
        resp = convert.score_response(pb.ScoreRequest(top_k=k), model, batch)
        expected = top_features(batch.feature_errors, model.metadata.feature_names, k)
        got = [[(f.name, f.error, f.share) for f in r.top_features] for r in resp.results]
        as_float32 = [
            [(n, float(np.float32(e)), float(np.float32(s))) for n, e, s in row] for row in expected
        ]
        assert got == as_float32
