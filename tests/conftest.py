"""Shared, session-scoped fixtures: a tiny labelled data set and a real model trained on it.

``tiny_dataset`` is deterministic synthetic data (8 correlated features ``f0``..``f7`` driven by
two latent factors, plus injected anomalies that break the correlations). ``tiny_model_path``
is a real ONNX model trained on its normal rows by :func:`training.api.train_model`, with
thresholds ``warning`` and ``critical``. Both are built once per test session.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

TINY_FEATURES = [f"f{i}" for i in range(8)]
TINY_NORMAL_ROWS = 600
TINY_ANOMALY_ROWS = 40
TINY_SEED = 7


@dataclass(frozen=True)
class TinyDataset:
    """The tiny data set: the CSV on disk and the same data as arrays.

    ``csv_path`` has a header ``f0,...,f7,label`` (label 1 = anomaly). Rows are shuffled, so
    anomalies are spread through the file; ``X[y == 0]`` are the normal rows.
    """

    csv_path: Path
    X: np.ndarray  # float32 [n, 8]
    y: np.ndarray  # int8 [n], 1 = anomaly
    feature_names: list[str]
    label_column: str = "label"

    @property
    def normal(self) -> np.ndarray:
        return self.X[self.y == 0]

    @property
    def anomalies(self) -> np.ndarray:
        return self.X[self.y == 1]


def make_tiny_arrays(seed: int = TINY_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic correlated data with anomalies that break the correlations."""
    rng = np.random.default_rng(seed)
    n = TINY_NORMAL_ROWS + TINY_ANOMALY_ROWS
    latent = rng.standard_normal((n, 2))
    mixing = np.array(
        [[1.0, 0.5, -0.8, 0.3, 1.2, -0.4, 0.7, 0.0], [0.2, -1.0, 0.4, 0.9, -0.3, 1.1, 0.6, 0.8]]
    )
    offsets = np.array([10.0, 50.0, -5.0, 0.0, 100.0, 3.0, 1.0, 20.0])
    scales = np.array([1.0, 5.0, 0.5, 2.0, 10.0, 1.0, 0.1, 3.0])
    x = (latent @ mixing + 0.05 * rng.standard_normal((n, 8))) * scales + offsets
    y = np.zeros(n, dtype=np.int8)
    y[TINY_NORMAL_ROWS:] = 1
    anomalous = x[TINY_NORMAL_ROWS:]
    # Each anomaly pushes 2-3 features 4-6 standard units off the manifold.
    for row in anomalous:
        cols = rng.choice(8, size=int(rng.integers(2, 4)), replace=False)
        row[cols] += (
            rng.choice([-1.0, 1.0], size=len(cols)) * rng.uniform(4, 6, size=len(cols)) * scales[cols]
        )
    order = rng.permutation(n)
    return x[order].astype(np.float32), y[order]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    """8 features ``f0``..``f7``, 600 normal and 40 anomalous rows, as a CSV and as arrays."""
    x, y = make_tiny_arrays()
    path = tmp_path_factory.mktemp("tiny_data") / "tiny.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*TINY_FEATURES, "label"])
        for row, label in zip(x, y, strict=True):
            writer.writerow([*(repr(float(v)) for v in row), int(label)])
    return TinyDataset(csv_path=path, X=x, y=y, feature_names=list(TINY_FEATURES))


@pytest.fixture(scope="session")
def tiny_model_path(tiny_dataset: TinyDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model (``models/tiny.onnx``) trained on the tiny data set's normal rows in a few seconds.

    Thresholds ``warning`` (q0.95) and ``critical`` (q0.999) on held-out normal rows. The
    file is shared by the whole session: copy it before modifying it. Its directory ``models/`` is
    made by the trainer, as `aeguard train --out models/NAME.onnx` makes it (the container test
    mounts it as it is).
    """
    from training.api import TrainOptions, train_model
    from training.fitting.fit import FitConfig

    out = tmp_path_factory.mktemp("tiny_model") / "models" / "tiny.onnx"
    options = TrainOptions(
        name="tiny",
        version="1",
        thresholds=("warning=q0.95", "critical=q0.999"),
        fit=FitConfig(hidden=[16], coding_size=2, max_epochs=60, patience=8, seed=0),
        source=str(tiny_dataset.csv_path),
    )
    train_model(tiny_dataset.X, tiny_dataset.feature_names, out, labels=tiny_dataset.y, options=options)
    return out


@pytest.fixture(scope="session")
def windowed_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real windowed model (``win.onnx``): W = 5 rows of ``f0``..``f2``, series ``host``, time ``ts``
    (step 1 s, a gap above 3 s); built by ``tests/window_support.py`` in a few seconds."""
    from window_support import build_windowed_model

    return build_windowed_model(tmp_path_factory.mktemp("windowed") / "win.onnx")


@pytest.fixture(scope="session")
def single_feature_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A windowed model of ONE feature (``f0``), W = 8, coding size 2: undercomplete thanks to windows."""
    from window_support import build_windowed_model

    return build_windowed_model(
        tmp_path_factory.mktemp("windowed") / "one.onnx", n_features=1, size=8, coding=2, name="one"
    )


# -- a client side for test modules that define a module-scoped `server` (a ServerHandle) -----------
@pytest.fixture(scope="module")
def channel(server):
    """A plaintext channel to the module's ``server`` (proxies off: loopback only)."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.enable_http_proxy", 0)]) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    """The generated AnomalyDetector stub on ``channel``."""
    from service.rpc.api import aeguard_pb2_grpc as pb_grpc

    return pb_grpc.AnomalyDetectorStub(channel)


@pytest.fixture(scope="module")
def client(channel):
    """``service.client.Client`` on ``channel``."""
    from service.client import Client

    return Client("unused", channel=channel)
