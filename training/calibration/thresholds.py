"""Thresholds from calibration scores: parse ``name=q0.99`` / ``fpr0.001`` / ``f1`` specs and compute them."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.artifact import SEVERITY_NONE, ScoreDistribution, Threshold
from service.errors import DataError, InvalidInputError

log = logging.getLogger(__name__)

_SPEC = re.compile(r"^(?P<name>[A-Za-z_][\w.-]*)=(?P<method>q|fpr|f1|fixed:?)(?P<param>[0-9.eE+-]*)$")
#: Smallest threshold value: the artifact requires thresholds > 0.
MIN_THRESHOLD = 1e-12


@dataclass(frozen=True)
class ThresholdSpec:
    """A parsed ``NAME=METHOD[PARAM]`` threshold request."""

    name: str
    method: str  # "quantile" | "fpr" | "f1" | "fixed"
    param: float | None


def parse_threshold_spec(text: str) -> ThresholdSpec:
    """Parse one ``--threshold`` value.

    Parameters
    ----------
    text : str
        ``NAME=qP`` (quantile ``P`` of the calibration scores, ``0 < P < 1``), ``NAME=fprR``
        (false-positive rate ``R`` on calibration scores), ``NAME=f1`` (F1-optimal on a labelled
        tuning split) or ``NAME=fixedV`` (the value ``V``).

    Returns
    -------
    ThresholdSpec

    Raises
    ------
    InvalidInputError
        When the text does not follow the syntax or the parameter is out of range.
    """
    m = _SPEC.match(text.strip())
    syntax = "use NAME=q0.99 (quantile), NAME=fpr0.001 (false-positive rate), NAME=f1 or NAME=fixed0.5"
    if not m:
        raise InvalidInputError(f"threshold '{text}' is not understood: {syntax}")
    name, method, raw = m["name"], m["method"].rstrip(":"), m["param"]
    if name == SEVERITY_NONE:
        raise InvalidInputError(f"threshold '{text}': the name '{SEVERITY_NONE}' is reserved")
    if method == "f1":
        if raw:
            raise InvalidInputError(f"threshold '{text}': f1 takes no parameter; {syntax}")
        return ThresholdSpec(name, "f1", None)
    try:
        param = float(raw)
    except ValueError:
        raise InvalidInputError(f"threshold '{text}' needs a number after '{method}': {syntax}") from None
    if method in ("q", "fpr") and not 0.0 < param < 1.0:
        raise InvalidInputError(f"threshold '{text}': {method} must be strictly between 0 and 1")
    if method == "fixed" and not param > 0:
        raise InvalidInputError(f"threshold '{text}': a fixed threshold must be > 0")
    return ThresholdSpec(name, {"q": "quantile", "fpr": "fpr", "fixed": "fixed"}[method], param)


def parse_threshold_specs(texts: Sequence[str]) -> list[ThresholdSpec]:
    """Parse several specs and refuse duplicate names."""
    specs = [parse_threshold_spec(t) for t in texts]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidInputError(f"threshold name(s) given twice: {', '.join(dupes)}")
    if not specs:
        raise InvalidInputError("at least one threshold is required")
    return specs


def f1_optimal(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold maximising F1 for ``score >= threshold`` on labelled scores.

    Returns
    -------
    threshold, f1 : float
    """
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1[:-1]))  # the last point has no threshold
    return float(thresholds[best]), float(f1[best])


def compute_thresholds(
    specs: Sequence[ThresholdSpec],
    calibration_scores: np.ndarray,
    tuning_scores: np.ndarray | None = None,
    tuning_labels: np.ndarray | None = None,
) -> list[Threshold]:
    """Turn specs into threshold values, sorted from lowest to highest.

    Parameters
    ----------
    specs : sequence of ThresholdSpec
    calibration_scores : numpy.ndarray
        Scores of held-out normal rows (for quantile and fpr specs).
    tuning_scores, tuning_labels : numpy.ndarray, optional
        Scores and 0/1 labels of a labelled split that is not the evaluation set (for f1 specs).

    Returns
    -------
    list of Threshold
        Sorted by value; every value is finite and > 0.
    """
    cal = np.asarray(calibration_scores, dtype=np.float64)
    out = []
    for spec in specs:
        if spec.method == "quantile":
            assert spec.param is not None
            value = float(np.quantile(cal, spec.param, method="higher"))
        elif spec.method == "fpr":
            assert spec.param is not None
            value = float(np.quantile(cal, 1.0 - spec.param, method="higher"))
            # Strictly above the quantile row so at most that share of calibration rows is flagged.
            value = float(np.nextafter(np.float32(value), np.float32(np.inf)))
        elif spec.method == "f1":
            if tuning_labels is None or tuning_scores is None or len(np.unique(tuning_labels)) < 2:
                raise DataError(
                    f"threshold '{spec.name}=f1' needs labelled data with both normal rows and at least "
                    "2 anomalies (half of them tune the threshold, half evaluate it); give "
                    "--label-column, or an NPZ with y"
                )
            value, f1 = f1_optimal(np.asarray(tuning_scores), np.asarray(tuning_labels))
            out.append(Threshold(spec.name, max(value, MIN_THRESHOLD), "f1", round(f1, 6)))
            continue
        else:
            assert spec.param is not None
            value = spec.param
        out.append(Threshold(spec.name, max(value, MIN_THRESHOLD), spec.method, spec.param))
    out.sort(key=lambda t: t.value)
    order = [t.name for t in out]
    requested = [s.name for s in specs]
    if order != requested:
        log.info("thresholds sorted by value: %s", ", ".join(order))
    return out


def score_distribution(scores: np.ndarray) -> ScoreDistribution:
    """Quantiles of calibration scores: 0..1 in 1 % steps plus the 0.1 % and 99.9 % tails."""
    probs = sorted({*np.round(np.linspace(0, 1, 101), 4).tolist(), 0.001, 0.999})
    values = np.quantile(np.asarray(scores, dtype=np.float64), probs)
    return ScoreDistribution(probabilities=[float(p) for p in probs], values=[float(v) for v in values])
