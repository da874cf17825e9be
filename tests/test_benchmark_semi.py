"""`aeguard benchmark --labelled-fraction`: the ADBench semi-supervised split and the option's refusals."""

from __future__ import annotations

import numpy as np
import pytest

from service.cli import main
from service.errors import InvalidInputError
from training.benchmark.semi import TEST_FRACTION, parse_fractions, semi_supervised_split
from training.data.tables import UNLABELLED


def labels(n_normal: int, n_anomalies: int) -> np.ndarray:
    y = np.r_[np.zeros(n_normal, dtype=int), np.ones(n_anomalies, dtype=int)]
    return np.random.default_rng(1).permutation(y)


@pytest.mark.parametrize(("fraction", "expected"), [(0.01, 1), (0.05, 4), (0.1, 7), (1.0, 70)])
def test_split_labels_that_fraction_of_the_training_anomalies(fraction, expected):
    y = labels(900, 100)
    split = semi_supervised_split(y, seed=4, labelled_fraction=fraction)
    # A stratified 70 / 30 split of every row, disjoint and complete.
    assert len(np.intersect1d(split.train, split.test)) == 0
    assert np.array_equal(np.sort(np.r_[split.train, split.test]), np.arange(len(y)))
    assert len(split.test) == round(TEST_FRACTION * len(y)) and y[split.test].sum() == 30
    # max(1, round(fraction * 70 training anomalies)) of them labelled; every other training row unlabelled.
    assert len(split.labelled) == expected and (y[split.labelled] == 1).all()
    assert np.isin(split.labelled, split.train).all()
    partial = split.partial_labels()
    assert (partial == 1).sum() == expected and set(np.unique(partial)) <= {1, UNLABELLED}
    assert np.array_equal(split.train[partial == 1], split.labelled)


def test_split_is_seeded_and_the_test_rows_do_not_depend_on_the_fraction():
    y = labels(300, 20)
    a, b = semi_supervised_split(y, 0, 0.1), semi_supervised_split(y, 0, 0.1)
    assert np.array_equal(a.labelled, b.labelled) and np.array_equal(a.test, b.test)
    # The unsupervised detector is fitted once per seed and shared by every fraction: same rows.
    assert np.array_equal(semi_supervised_split(y, 0, 0.01).test, a.test)
    assert not np.array_equal(semi_supervised_split(y, 1, 0.1).test, a.test)
    # One labelled anomaly at least, even where ADBench's rounding down would leave none.
    assert len(semi_supervised_split(y, 0, 0.01).labelled) == 1


def test_bad_fractions_are_refused(capsys, tmp_path):
    assert parse_fractions("0.1, 0.01,0.05") == [0.01, 0.05, 0.1]
    for bad in ("0", "1.5", "a", ""):
        with pytest.raises(InvalidInputError, match="--labelled-fraction"):
            parse_fractions(bad)
    assert main(["benchmark", str(tmp_path), "--labelled-fraction", "0.2,2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "aeguard: error: --labelled-fraction values must be in (0, 1], got '0.2,2'"
