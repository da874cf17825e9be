"""The scorer on a real trained model: validation messages, classification, top features, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from service import artifact
from service.errors import InvalidInputError, ModelLoadError
from service.scorer import Scorer, top_features


@pytest.fixture(scope="module")
def scorer(tiny_model_path: Path) -> Scorer:
    return Scorer.load(tiny_model_path)


def test_anomalies_score_higher_than_normal_rows(scorer: Scorer, tiny_dataset) -> None:
    normal = scorer.score(tiny_dataset.normal)
    anomalous = scorer.score(tiny_dataset.anomalies)
    assert np.median(anomalous.score) > 5 * np.median(normal.score)
    # Most anomalies cross the primary threshold; most normal rows do not.
    assert anomalous.is_anomaly.mean() > 0.8
    assert normal.is_anomaly.mean() < 0.1


def test_severity_and_normalized_score_follow_thresholds(scorer: Scorer) -> None:
    warning, critical = (t.value for t in scorer.metadata.thresholds)
    scores = np.array([0.0, warning * 0.999, warning, (warning + critical) / 2, critical * 2])
    batch = scorer.classify(scores)
    assert batch.severity_names(scorer.metadata) == ["none", "none", "warning", "warning", "critical"]
    assert batch.is_anomaly.tolist() == [False, False, True, True, True]
    np.testing.assert_allclose(batch.normalized_score, scores / warning, rtol=1e-6)
    assert batch.normalized_score[2] == pytest.approx(1.0)
    # The levels match a binary search over the thresholds, a NaN score (a broken model) included:
    # it counts as above every threshold rather than passing silently as normal.
    odd = np.array([np.nan, np.inf, warning, np.nextafter(np.float32(warning), np.float32(0))], np.float32)
    thresholds = [t.value for t in scorer.metadata.thresholds]
    expected = np.searchsorted(thresholds, odd.astype(np.float64), side="right")
    levels = scorer.classify(odd).severity_level.tolist()
    assert levels == expected.tolist()
    assert levels[:2] == [2, 2]


def test_score_equals_mean_of_feature_errors(scorer: Scorer, tiny_dataset) -> None:
    batch = scorer.score(tiny_dataset.X[:50], with_feature_errors=True)
    assert batch.feature_errors is not None
    assert batch.feature_errors.shape == (50, 8)
    np.testing.assert_allclose(batch.feature_errors.mean(axis=1), batch.score, rtol=1e-5, atol=1e-7)


def test_encode_and_reconstruct_shapes(scorer: Scorer, tiny_dataset) -> None:
    codes = scorer.encode(tiny_dataset.X[:5])
    assert codes.shape == (5, scorer.metadata.coding_size)
    recon = scorer.reconstruct(tiny_dataset.normal[:200])
    assert recon.shape == (200, 8)
    # Reconstructions of normal rows are close to them in raw units, relative to each feature's spread.
    spread = tiny_dataset.normal.std(axis=0)
    rel_err = np.abs(recon - tiny_dataset.normal[:200]) / spread
    assert np.median(rel_err) < 0.5


def test_scores_are_batch_independent(scorer: Scorer, tiny_dataset) -> None:
    one_by_one = np.concatenate([scorer.score(row[None, :]).score for row in tiny_dataset.X[:20]])
    np.testing.assert_allclose(one_by_one, scorer.score(tiny_dataset.X[:20]).score, rtol=1e-5)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (np.zeros((0, 8)), "empty"),
        (np.zeros(8), "2-D"),
        (np.zeros((3, 7)), "7 features per row, model 'tiny' expects 8"),
        (np.array([["a"] * 8]), "numeric"),
    ],
)
def test_bad_shapes_are_refused_with_a_precise_message(scorer: Scorer, rows, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        scorer.score(rows)


def test_non_finite_values_name_sample_and_feature(scorer: Scorer) -> None:
    rows = np.ones((4, 8), dtype=np.float32)
    rows[2, 5] = np.nan
    rows[3, 1] = np.inf
    with pytest.raises(InvalidInputError, match=r"sample 2 feature 5 \('f5'\) is nan.*2 sample\(s\)"):
        scorer.score(rows)
    big = np.full((1, 8), 1e39)  # finite in float64, inf in float32
    with pytest.raises(InvalidInputError, match="overflowed float32"):
        scorer.score(big)


def test_top_features_are_ordered_with_shares() -> None:
    fe = np.array([[1.0, 3.0, 0.0, 6.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    top = top_features(fe, ["a", "b", "c", "d"], 2)
    assert [name for name, _, _ in top[0]] == ["d", "b"]
    assert top[0][0][2] == pytest.approx(0.6)
    assert top[0][1][1] == pytest.approx(3.0)
    assert [share for _, _, share in top[1]] == [0.0, 0.0]
    assert top_features(fe, ["a", "b", "c", "d"], 10)[0][-1][0] == "c"


def test_not_an_onnx_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_text("definitely not protobuf")
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load this file"):
        Scorer.load(path)
    with pytest.raises(ModelLoadError, match="no such model file"):
        Scorer.load(tmp_path / "missing.onnx")


def test_onnx_without_aeguard_metadata_is_refused(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "identity.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelLoadError, match="not exported by `aeguard train`"):
        Scorer.load(path)


def _rewrite_metadata(src: Path, dst: Path, edit) -> Path:
    model = onnx.load(src)
    entry = next(p for p in model.metadata_props if p.key == artifact.METADATA_KEY)
    doc = json.loads(entry.value)
    edit(doc)
    entry.value = json.dumps(doc)
    onnx.save(model, dst)
    return dst


def test_inconsistent_metadata_is_refused(tiny_model_path: Path, tmp_path: Path) -> None:
    def newer_schema(doc):
        doc["schema_version"] = 99

    def wrong_width(doc):
        doc["feature_names"] = doc["feature_names"][:-1]

    def unsorted_thresholds(doc):
        doc["thresholds"].reverse()

    cases = [
        (newer_schema, "schema_version 99 is not supported"),
        (wrong_width, "input width 8 does not match the 7 feature names"),
        (unsorted_thresholds, "sorted from lowest to highest"),
    ]
    for i, (edit, message) in enumerate(cases):
        path = _rewrite_metadata(tiny_model_path, tmp_path / f"bad{i}.onnx", edit)
        with pytest.raises(ModelLoadError, match=message):
            Scorer.load(path)
