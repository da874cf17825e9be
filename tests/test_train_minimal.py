"""The minimal train -> ONNX path: the shared tiny model loads in the scorer and matches torch."""

from __future__ import annotations

import numpy as np
import onnx

from service import artifact
from service.scorer import Scorer


def test_tiny_model_loads_and_has_the_contract(tiny_model_path, tiny_dataset):
    scorer = Scorer.load(tiny_model_path)
    meta = scorer.metadata
    assert meta.feature_names == tiny_dataset.feature_names
    assert [t.name for t in meta.thresholds] == ["warning", "critical"]
    assert meta.coding_size == 2
    model = onnx.load(str(tiny_model_path))
    assert [o.name for o in model.graph.output] == list(artifact.OUTPUT_NAMES)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    # The export enforces |torch - ort| <= atol + rtol * |torch|; with whitened residuals the far-out
    # probe rows score in the thousands, so the absolute figure is float32 rounding at that scale.
    assert meta.export["parity_tolerance"]["rtol"] <= 1e-4
    assert meta.export["parity_max_abs_diff"] < 1e-2


def test_tiny_model_separates_anomalies(tiny_model_path, tiny_dataset):
    scorer = Scorer.load(tiny_model_path)
    normal = scorer.score(tiny_dataset.normal).score
    anomalous = scorer.score(tiny_dataset.anomalies).score
    assert np.median(anomalous) > 5 * np.median(normal)
    assert scorer.metadata.evaluation["roc_auc"] > 0.9


def test_any_batch_size_scores_the_same(tiny_model_path, tiny_dataset):
    scorer = Scorer.load(tiny_model_path)
    whole = scorer.score(tiny_dataset.X[:33]).score
    one_by_one = np.concatenate([scorer.score(tiny_dataset.X[i : i + 1]).score for i in range(33)])
    np.testing.assert_allclose(whole, one_by_one, rtol=1e-5, atol=1e-7)
