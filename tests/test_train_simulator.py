"""The telemetry simulator behind the built-in default model."""

from __future__ import annotations

import numpy as np

from training.data.simulator import ANOMALY_KINDS, FEATURES, SimulatorConfig, simulate_telemetry
from training.data.tables import load_dataset


def test_deterministic_and_labelled():
    cfg = SimulatorConfig(days=3, seed=5)
    a, b = simulate_telemetry(cfg), simulate_telemetry(cfg)
    np.testing.assert_array_equal(a.x, b.x)
    assert a.kinds == b.kinds
    other = simulate_telemetry(SimulatorConfig(days=3, seed=6))
    assert not np.array_equal(a.x, other.x)
    assert a.x.shape == (3 * 86400 // cfg.step_s, len(FEATURES))
    assert np.isfinite(a.x).all()
    kinds = {k for k in a.kinds if k}
    assert kinds == set(ANOMALY_KINDS)
    assert all((k != "") == bool(label) for k, label in zip(a.kinds, a.labels, strict=True))
    assert 0.01 < a.labels.mean() < 0.2


def test_metrics_are_correlated_like_a_service():
    t = simulate_telemetry(SimulatorConfig(days=2, seed=0))
    normal = t.x[t.labels == 0]
    col = {n: i for i, n in enumerate(FEATURES)}
    corr = np.corrcoef(normal, rowvar=False)
    assert corr[col["request_rate_rps"], col["cpu_util_pct"]] > 0.9
    assert corr[col["request_rate_rps"], col["network_out_mbps"]] > 0.9
    assert corr[col["latency_p50_ms"], col["latency_p99_ms"]] > 0.8


def test_written_csv_loads_for_training(tmp_path):
    t = simulate_telemetry(SimulatorConfig(days=1, seed=0))
    path = t.write(tmp_path / "tel.csv")
    data = load_dataset(path, label_column="label", exclude_columns="timestamp,anomaly_kind")
    assert data.feature_names == list(FEATURES)
    np.testing.assert_array_equal(data.labels, t.labels)
    np.testing.assert_allclose(data.x, t.x)
