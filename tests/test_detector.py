"""`AutoencoderDetector`: the scikit-learn-style wrapper over the training pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from service.scorer import Scorer
from training.detector import AutoencoderDetector


@pytest.fixture(scope="module")
def fitted(tiny_dataset):
    det = AutoencoderDetector(hidden=[16], coding_size=2, max_epochs=15, patience=5, threshold="q0.99")
    assert det.fit(tiny_dataset.normal) is det
    return det


def test_fit_predict_decision_function(fitted, tiny_dataset):
    scores = fitted.decision_function(tiny_dataset.X)
    assert scores.shape == (len(tiny_dataset.X),)
    assert np.median(scores[tiny_dataset.y == 1]) > np.median(
        scores[tiny_dataset.y == 0]
    )  # higher = anomalous
    pred = fitted.predict(tiny_dataset.X)
    assert set(np.unique(pred)) <= {0, 1}
    np.testing.assert_array_equal(pred, (scores >= fitted.threshold_).astype(int))
    assert pred[tiny_dataset.y == 1].mean() > 0.7 and pred[tiny_dataset.y == 0].mean() < 0.1
    np.testing.assert_array_equal(fitted.score_samples(tiny_dataset.X), -scores)
    assert fitted.transform(tiny_dataset.X[:5]).shape == (5, 2)
    assert fitted.n_features_in_ == 8 and fitted.get_params()["coding_size"] == 2


def test_save_gives_the_same_scores_in_onnxruntime(fitted, tiny_dataset, tmp_path):
    path = fitted.save(tmp_path / "det.onnx")
    scorer = Scorer.load(path)
    assert scorer.metadata.primary_threshold.value == pytest.approx(fitted.threshold_)
    np.testing.assert_allclose(
        scorer.score(tiny_dataset.X).score, fitted.decision_function(tiny_dataset.X), rtol=1e-4, atol=1e-6
    )


def test_unfitted_and_wrong_width_are_refused(fitted):
    with pytest.raises(RuntimeError, match="not fitted"):
        AutoencoderDetector().predict(np.zeros((2, 8)))
    with pytest.raises(Exception, match="8"):
        fitted.predict(np.zeros((2, 5)))
