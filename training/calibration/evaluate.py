"""Detection-quality metrics on scores: ROC-AUC, PR-AUC, precision / recall / F1 per threshold."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from service.artifact import Threshold
from training import defaults

log = logging.getLogger(__name__)


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def score_summary(scores: np.ndarray) -> dict[str, float | int | None]:
    """Count, mean and a few quantiles of a score vector (JSON-safe)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return {"count": 0}
    q = np.quantile(s, [0.5, 0.9, 0.99])
    return {
        "count": int(s.size),
        "mean": _finite(s.mean()),
        "median": _finite(q[0]),
        "p90": _finite(q[1]),
        "p99": _finite(q[2]),
        "max": _finite(s.max()),
    }


def detection_metrics(
    scores: np.ndarray, labels: np.ndarray | None, thresholds: Sequence[Threshold]
) -> dict[str, Any]:
    """Metrics of ``scores`` against 0/1 ``labels`` (higher score = more anomalous).

    Parameters
    ----------
    scores : numpy.ndarray
        One score per row.
    labels : numpy.ndarray or None
        0 = normal, 1 = anomaly; ``None`` gives the normal-score summary and flag rates only.
    thresholds : sequence of Threshold
        A row is flagged at a level when ``score >= value``.

    Returns
    -------
    dict
        ``rows``, ``normal_scores``, and with both classes present ``roc_auc``, ``pr_auc``,
        ``anomaly_scores``; per threshold ``precision``, ``recall``, ``f1``, ``flagged_rate``.
    """
    s = np.asarray(scores, dtype=np.float64)
    out: dict[str, Any] = {"rows": int(s.size)}
    y = None if labels is None else np.asarray(labels).astype(int)
    normal = s if y is None else s[y == 0]
    out["normal_scores"] = score_summary(normal)
    if y is not None:
        out["anomalies"] = int(y.sum())
        out["anomaly_scores"] = score_summary(s[y == 1])
    per = {}
    for t in thresholds:
        flagged = s >= t.value
        entry: dict[str, Any] = {"value": t.value, "flagged_rate": float(flagged.mean()) if s.size else 0.0}
        if y is not None:
            tp = int((flagged & (y == 1)).sum())
            fp = int((flagged & (y == 0)).sum())
            fn = int((~flagged & (y == 1)).sum())
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / (tp + fn) if tp + fn else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            n_normal = int((y == 0).sum())
            entry.update(
                precision=precision,
                recall=recall,
                f1=f1,
                false_positive_rate=fp / n_normal if n_normal else 0.0,
                tp=tp,
                fp=fp,
                fn=fn,
            )
        per[t.name] = entry
    out["thresholds"] = per
    if y is not None and 0 < y.sum() < y.size:
        from sklearn.metrics import average_precision_score, roc_auc_score

        out["roc_auc"] = float(roc_auc_score(y, s))
        # average_precision_score can exceed 1 by a rounding error on a perfect ranking.
        out["pr_auc"] = min(1.0, float(average_precision_score(y, s)))
        out["anomaly_rate"] = float(y.mean())
    return out


def identity_check(
    score_fn: Callable[[np.ndarray], np.ndarray], x_real: np.ndarray, seed: int
) -> dict[str, Any]:
    """Does the model reconstruct garbage about as well as data (i.e. copy its input)?

    Scores real rows, the same rows with every column shuffled independently (breaks the
    correlations the model should have learnt), and Gaussian noise with each column's mean and
    standard deviation. A model that learnt structure gives garbage much higher errors.

    Parameters
    ----------
    score_fn : callable
        Raw rows ``[n, d]`` -> scores ``[n]``.
    x_real : numpy.ndarray
        Held-out normal rows.
    seed : int
        Seed for the shuffles and noise.

    Returns
    -------
    dict
        Median scores, ``shuffled_ratio`` and ``noise_ratio`` (garbage / real), and ``copying``
        (true when even the larger ratio is below :data:`training.defaults.IDENTITY_RATIO_WARN`).
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(x_real, dtype=np.float32)
    shuffled = np.column_stack([rng.permutation(x[:, j]) for j in range(x.shape[1])]).astype(np.float32)
    noise = (x.mean(axis=0) + x.std(axis=0) * rng.standard_normal(x.shape)).astype(np.float32)
    real = float(np.median(score_fn(x)))
    shuf = float(np.median(score_fn(shuffled)))
    noi = float(np.median(score_fn(noise)))
    floor = max(real, 1e-12)
    result = {
        "real_median_score": real,
        "shuffled_median_score": shuf,
        "noise_median_score": noi,
        "shuffled_ratio": shuf / floor,
        "noise_ratio": noi / floor,
        "warn_below_ratio": defaults.IDENTITY_RATIO_WARN,
    }
    worst = max(result["shuffled_ratio"], result["noise_ratio"])
    result["copying"] = bool(worst < defaults.IDENTITY_RATIO_WARN)
    return result
