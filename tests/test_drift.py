"""Unit tests of the score-drift PSI (service/drift.py): numbers checked by hand, no sockets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.artifact import ScoreDistribution
from service.drift import ScoreDrift, psi, reference_bins

UNIFORM = ScoreDistribution(probabilities=[0.0, 0.25, 0.5, 0.75, 1.0], values=[0.0, 1.0, 2.0, 3.0, 4.0])


def test_reference_bins_from_quantiles():
    edges, expected = reference_bins(UNIFORM)
    assert edges.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    # bins: <=0, (0,1], (1,2], (2,3], (3,4], >4
    assert expected.tolist() == pytest.approx([0.0, 0.25, 0.25, 0.25, 0.25, 0.0])


def test_reference_bins_merge_tied_quantiles_and_keep_tails():
    dist = ScoreDistribution(probabilities=[0.1, 0.5, 0.6, 0.9], values=[1.0, 2.0, 2.0, 5.0])
    edges, expected = reference_bins(dist)
    assert edges.tolist() == [1.0, 2.0, 5.0]
    assert expected.tolist() == pytest.approx([0.1, 0.5, 0.3, 0.1])
    assert expected.sum() == pytest.approx(1.0)


def test_many_quantiles_are_coarsened_to_deciles():
    probs = np.linspace(0, 1, 101)
    dist = ScoreDistribution(probabilities=probs.tolist(), values=(probs * 100).tolist())
    edges, expected = reference_bins(dist, max_bins=10)
    assert edges.tolist() == pytest.approx([10, 20, 30, 40, 50, 60, 70, 80, 90])
    assert expected.tolist() == pytest.approx([0.1] * 10)


def test_undrifted_window_reads_near_zero_even_with_fine_quantiles():
    rng = np.random.default_rng(3)
    probs = np.linspace(0, 1, 101)
    dist = ScoreDistribution(
        probabilities=probs.tolist(), values=np.quantile(rng.exponential(size=100_000), probs).tolist()
    )
    drift = ScoreDrift(dist, window=200, min_samples=50)
    drift.add(rng.exponential(size=200))
    assert drift.value() < 0.2


def test_psi_by_hand():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    want = (0.9 - 0.5) * math.log(0.9 / 0.5) + (0.1 - 0.5) * math.log(0.1 / 0.5)
    assert psi([0.9, 0.1], [0.5, 0.5]) == pytest.approx(want)
    # An empty bin is floored at 1e-4 rather than giving infinity.
    assert math.isfinite(psi([1.0, 0.0], [0.5, 0.5]))


def test_same_distribution_gives_small_psi_and_shifted_gives_large():
    drift = ScoreDrift(UNIFORM, window=4000, min_samples=10)
    rng = np.random.default_rng(0)
    drift.add(rng.uniform(0.0, 4.0, 4000))
    assert drift.value() < 0.01
    drift.add(rng.uniform(3.0, 8.0, 4000))  # the whole window is replaced by drifted scores
    assert drift.n_samples == 4000
    assert drift.value() > 1.0


def test_window_forgets_the_oldest_scores():
    drift = ScoreDrift(UNIFORM, window=4, min_samples=1)
    drift.add(np.array([0.5, 0.5, 0.5, 0.5]))  # all in bin (0, 1]
    drift.add(np.array([3.5, 3.5]))  # two oldest forgotten
    assert drift.shares().tolist() == pytest.approx([0, 0.5, 0, 0, 0.5, 0])
    drift.add(3.5)
    drift.add(np.array([1.5]))
    assert drift.shares().tolist() == pytest.approx([0, 0, 0.25, 0, 0.75, 0])
    assert drift.n_samples == 4


def test_batch_and_one_by_one_agree_and_batch_larger_than_window():
    rng = np.random.default_rng(1)
    scores = rng.uniform(-1, 6, 257)
    one, many = ScoreDrift(UNIFORM, window=100, min_samples=1), ScoreDrift(UNIFORM, window=100, min_samples=1)
    for s in scores:
        one.add(float(s))
    many.add(scores[:50])
    many.add(scores[50:])  # 207 > window: only the last 100 count
    assert one.shares().tolist() == pytest.approx(many.shares().tolist())
    assert one.value() == pytest.approx(many.value())


def test_not_enough_samples_reads_nan():
    drift = ScoreDrift(UNIFORM, window=1000, min_samples=100)
    drift.add(np.full(99, 1.5))
    assert math.isnan(drift.value())
    drift.add(1.5)
    assert drift.value() > 0.2
