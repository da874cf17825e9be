"""The detectors a benchmark compares: aeguard's own and the peers a data scientist would try first.

Each entry builds a fresh, seeded detector with its library's default settings (no tuning for
any dataset). Libraries are imported when a detector is built, so listing names costs nothing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Detector(Protocol):
    """What the benchmark needs: ``fit`` on normal rows, then scores, higher = more anomalous."""

    def fit(self, x: np.ndarray) -> Any: ...

    def anomaly_score(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class _Adapter:
    """Wraps an estimator whose ``score_fn(estimator, x)`` gives higher-is-more-anomalous scores."""

    estimator: Any
    score_fn: Callable[[Any, np.ndarray], np.ndarray]

    def fit(self, x: np.ndarray) -> _Adapter:
        self.estimator.fit(x)
        return self

    def anomaly_score(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.score_fn(self.estimator, x), dtype=np.float64).ravel()


def _decision(est: Any, x: np.ndarray) -> np.ndarray:
    return est.decision_function(x)


class _ExportedAeguard:
    """aeguard as a service runs it: fit, export the ONNX artifact, score it with ``service.scorer``.

    The export and loading count as fit time: a model is not usable before it exists as a file.
    """

    def __init__(self, seed: int, architecture: str = "ae") -> None:
        from training.detector import AutoencoderDetector

        self.detector = AutoencoderDetector(random_state=seed, architecture=architecture)

    def fit(self, x: np.ndarray) -> _ExportedAeguard:
        from service.scorer import Scorer

        self.detector.fit(x)
        with tempfile.TemporaryDirectory(prefix="aeguard-bench-") as tmp:
            self.scorer = Scorer.load(self.detector.save(Path(tmp) / "model.onnx"))
        return self

    def anomaly_score(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.scorer.score(x).score, dtype=np.float64)


def _aeguard(seed: int) -> Detector:
    return _ExportedAeguard(seed)


def _aeguard_vae(seed: int) -> Detector:
    return _ExportedAeguard(seed, architecture="vae")


def _iforest(seed: int) -> Detector:
    from sklearn.ensemble import IsolationForest

    # sklearn's decision_function is higher = more normal; the negated score_samples is the anomaly score.
    return _Adapter(IsolationForest(random_state=seed), lambda est, x: -est.score_samples(x))


def _knn(seed: int) -> Detector:
    from pyod.models.knn import KNN

    return _Adapter(KNN(), _decision)


def _knn_standardized(seed: int) -> Detector:
    from pyod.models.knn import KNN
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return _Adapter(make_pipeline(StandardScaler(), KNN()), _decision)


def _pyod_ae(seed: int) -> Detector:
    from pyod.models.auto_encoder import AutoEncoder

    return _Adapter(AutoEncoder(random_state=seed, verbose=0, device="cpu"), _decision)


def _ecod(seed: int) -> Detector:
    from pyod.models.ecod import ECOD

    return _Adapter(ECOD(), _decision)


def _standardized(estimator: Any) -> Detector:
    """``estimator`` behind a StandardScaler fitted on the training rows (as ``knn-std``)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return _Adapter(make_pipeline(StandardScaler(), estimator), _decision)


def _lunar(seed: int) -> Detector:
    from pyod.models.lunar import LUNAR

    return _standardized(LUNAR(random_state=seed))


class _DeepSVDD:
    """PyOD DeepSVDD, built at ``fit``: its constructor needs the number of features."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def fit(self, x: np.ndarray) -> _DeepSVDD:
        from pyod.models.deep_svdd import DeepSVDD

        self.inner = _standardized(DeepSVDD(n_features=x.shape[1], random_state=self.seed, verbose=0))
        self.inner.fit(x)
        return self

    def anomaly_score(self, x: np.ndarray) -> np.ndarray:
        return self.inner.anomaly_score(x)


def _deep_svdd(seed: int) -> Detector:
    return _DeepSVDD(seed)


def _dif(seed: int) -> Detector:
    from pyod.models.dif import DIF

    return _standardized(DIF(random_state=seed, device="cpu"))


#: name -> (factory(seed) -> detector, one-line description for the report)
DETECTORS: dict[str, tuple[Callable[[int], Detector], str]] = {
    "aeguard": (
        _aeguard,
        "aeguard's AutoencoderDetector, default settings, exported to ONNX and scored by service.scorer",
    ),
    "aeguard-vae": (
        _aeguard_vae,
        "aeguard with --architecture vae (variational autoencoders), otherwise as `aeguard`",
    ),
    "knn": (_knn, "PyOD KNN (k=5, largest distance) on the raw features, PyOD's default"),
    "knn-std": (_knn_standardized, "scikit-learn StandardScaler, then PyOD KNN (k=5, largest distance)"),
    "pyod-ae": (_pyod_ae, "PyOD AutoEncoder (defaults: [64, 32] hidden, 10 epochs, standard scaling)"),
    "iforest": (_iforest, "scikit-learn IsolationForest (100 trees)"),
    "ecod": (_ecod, "PyOD ECOD"),
    "lunar": (_lunar, "scikit-learn StandardScaler, then PyOD LUNAR (defaults: 5 neighbours, 200 epochs)"),
    "deepsvdd": (_deep_svdd, "scikit-learn StandardScaler, then PyOD DeepSVDD (defaults: 100 epochs)"),
    "dif": (_dif, "scikit-learn StandardScaler, then PyOD DIF (defaults: 50 representations x 6 trees)"),
}


def build_detector(name: str, seed: int) -> Detector:
    """A fresh detector ``name`` seeded with ``seed``."""
    factory, _ = DETECTORS[name]
    return factory(seed)
