"""Threshold specs (quantile, false-positive rate, F1, fixed) and the score distribution."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import DataError, InvalidInputError
from training.calibration.thresholds import (
    ThresholdSpec,
    compute_thresholds,
    parse_threshold_spec,
    parse_threshold_specs,
    score_distribution,
)


def test_parse_specs():
    assert parse_threshold_spec("warning=q0.99") == ThresholdSpec("warning", "quantile", 0.99)
    assert parse_threshold_spec("page=fpr0.001") == ThresholdSpec("page", "fpr", 0.001)
    assert parse_threshold_spec("best=f1") == ThresholdSpec("best", "f1", None)
    assert parse_threshold_spec("hard=fixed2.5") == ThresholdSpec("hard", "fixed", 2.5)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("warning", "not understood"),
        ("warning=p0.9", "not understood"),
        ("warning=q1.5", "between 0 and 1"),
        ("warning=fpr0", "between 0 and 1"),
        ("none=q0.9", "reserved"),
        ("x=f10.5", "no parameter"),
        ("x=fixed0", "> 0"),
        ("x=q", "needs a number"),
    ],
)
def test_bad_specs_are_refused(text, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        parse_threshold_spec(text)


def test_duplicate_names_refused():
    with pytest.raises(InvalidInputError, match="given twice: a"):
        parse_threshold_specs(["a=q0.9", "a=q0.99"])


def test_quantile_and_fpr_values():
    cal = np.arange(1, 1001, dtype=np.float64)  # 1..1000
    specs = parse_threshold_specs(["hi=q0.99", "lo=q0.5", "f=fpr0.01"])
    got = {t.name: t for t in compute_thresholds(specs, cal)}
    assert got["lo"].value == 501 and got["hi"].value == 991
    # fpr: at most 1 % of calibration rows at or above the value
    assert (cal >= got["f"].value).mean() <= 0.01
    assert got["f"].method == "fpr" and got["f"].param == 0.01
    ordered = [t.name for t in compute_thresholds(specs, cal)]
    assert ordered == ["lo", "hi", "f"]  # sorted by value, lowest first


def test_f1_threshold_separates_classes_and_needs_labels():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 5.0, 6.0, 7.0])
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    (t,) = compute_thresholds(parse_threshold_specs(["best=f1"]), scores, scores, labels)
    assert t.method == "f1" and t.param == 1.0
    assert 0.4 < t.value <= 5.0
    with pytest.raises(DataError, match="labelled data"):
        compute_thresholds(parse_threshold_specs(["best=f1"]), scores, scores, None)


def test_zero_scores_give_positive_thresholds():
    (t,) = compute_thresholds(parse_threshold_specs(["w=q0.9"]), np.zeros(10))
    assert t.value > 0


def test_score_distribution_is_monotone():
    dist = score_distribution(np.random.default_rng(0).exponential(size=500))
    assert dist.probabilities[0] == 0.0 and dist.probabilities[-1] == 1.0
    assert 0.999 in dist.probabilities and 0.001 in dist.probabilities
    assert np.all(np.diff(dist.values) >= 0)
