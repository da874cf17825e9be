"""Metric helpers: bulk histogram updates equal per-value observe; drift and retired series at scrape time."""

from __future__ import annotations

import math

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, Histogram

from service.metrics import REFERENCE_SERIES, RETIRED, WINDOW_SERIES, ScrapeView, observe_many

BOUNDS = (0.1, 0.5, 1.0, 2.0)


def samples(registry: CollectorRegistry, name: str) -> dict[tuple, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name.startswith(name) and not s.name.endswith("_created")
    }


def test_observe_many_equals_observe_one_by_one():
    values = np.array([0.05, 0.1, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 9.0, 0.1], dtype=np.float32)
    bulk, single = CollectorRegistry(), CollectorRegistry()
    h_bulk = Histogram("h", "h", ["m"], buckets=BOUNDS, registry=bulk).labels("a")
    h_single = Histogram("h", "h", ["m"], buckets=BOUNDS, registry=single).labels("a")
    observe_many(h_bulk, list(BOUNDS), values)
    observe_many(h_bulk, list(BOUNDS), values[:1])  # the batch-1 path
    for v in [*values.tolist(), float(values[0])]:
        h_single.observe(v)
    got, want = samples(bulk, "h"), samples(single, "h")
    assert got.keys() == want.keys()
    for key in want:
        assert math.isclose(got[key], want[key], rel_tol=1e-6), key


def test_scrape_view_computes_psi_from_summed_windows_and_drops_retired_series():
    registry = CollectorRegistry()
    window = Gauge(WINDOW_SERIES, "w", ["model_name", "model_version", "bin"], registry=registry)
    reference = Gauge(REFERENCE_SERIES, "r", ["model_name", "model_version", "bin"], registry=registry)
    info = Gauge("aeguard_model_info", "i", ["model_name", "model_version"], registry=registry)
    for i, share in enumerate([0.25, 0.25, 0.5]):
        reference.labels("m", "2", str(i)).set(share)
        window.labels("m", "2", str(i)).set([50, 50, 100][i])  # exactly the reference: PSI 0
        reference.labels("m", "1", str(i)).set(RETIRED)
    info.labels("m", "2").set(1)
    info.labels("m", "1").set(0)
    families = {f.name: f for f in ScrapeView([registry], min_samples=10).collect()}
    assert WINDOW_SERIES not in families and REFERENCE_SERIES not in families
    [psi] = families["aeguard_score_drift_psi"].samples
    assert psi.labels == {"model_name": "m", "model_version": "2"} and psi.value == 0.0
    assert [s.labels["model_version"] for s in families["aeguard_model_info"].samples] == ["2"]
    few = {f.name: f for f in ScrapeView([registry], min_samples=1000).collect()}
    assert math.isnan(few["aeguard_score_drift_psi"].samples[0].value)  # not enough scores yet
