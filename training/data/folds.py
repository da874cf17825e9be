"""Cross-fitting plans: which rows each fold's networks train on and score, and the splits around them.

The plan is pure row bookkeeping (numpy); :func:`training.fitting.crossfit.crossfit` fits the
networks it names. See :mod:`training.fitting.crossfit` for why cross-fitting keeps thresholds honest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.errors import DataError
from training import defaults
from training.data.splits import Splits


@dataclass(frozen=True)
class Fold:
    """Rows of one fold: its ensemble fits on ``train`` (stops early on ``validation``), scores ``scored``."""

    train: np.ndarray
    validation: np.ndarray
    scored: np.ndarray


@dataclass(frozen=True)
class CrossFitPlan:
    """Every row index the cross-fit touches.

    ``splits.train`` / ``splits.validation`` are the final (served) ensemble's rows;
    ``splits.calibration``, ``splits.tuning`` and ``splits.evaluation`` index rows whose scores are
    out-of-fold. ``folds[j].scored`` are disjoint and cover every row that gets a score.
    """

    splits: Splits
    folds: list[Fold]


def plan_crossfit(
    n_rows: int,
    labels: np.ndarray | None,
    *,
    seed: int,
    folds: int,
    contaminated: bool = False,
    tune_anomalies: bool = False,
) -> CrossFitPlan:
    """Assign rows to folds, to the final fit, and to calibration / tuning / evaluation.

    Parameters
    ----------
    n_rows : int
        Rows in the data set.
    labels : numpy.ndarray or None
        0 = normal, 1 = anomaly. Without labels every row is treated as normal.
    seed : int
        Seed of the shuffle.
    folds : int
        Number of folds ``k >= 2``.
    contaminated : bool
        Train on all rows (anomalies included) instead of normal rows only.
    tune_anomalies : bool
        Send half the anomalies to the tuning split (for f1 thresholds).

    Returns
    -------
    CrossFitPlan

    Raises
    ------
    DataError
        When there are too few rows for ``folds`` folds.
    """
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
    rng = np.random.default_rng(seed)
    idx = np.arange(n_rows)
    if labels is None or contaminated:
        pool, anomalies = idx, idx[:0]
    else:
        pool, anomalies = idx[labels == 0], idx[labels == 1]
    # Each fold's ensemble needs >= 2 training rows (one to fit, one to stop early) and each fold
    # >= 1 row to score; MIN_ROWS keeps the same floor as the plain split.
    least = max(defaults.MIN_ROWS, 2 * folds)
    if len(pool) < least:
        what = "rows" if labels is None or contaminated else "normal rows (label 0)"
        raise DataError(
            f"training with {folds} cross-fitting folds needs at least {least} {what}, got {len(pool)} "
            f"(of {n_rows} row(s) in the file)"
        )
    pool = rng.permutation(pool)
    anomalies = rng.permutation(anomalies)
    n_val = max(1, round(len(pool) * defaults.VALIDATION_FRACTION))
    final_val, final_train = pool[:n_val], pool[n_val:]
    # Round-robin over the shuffled rows: folds differ in size by at most one row.
    pool_fold = np.arange(len(pool)) % folds
    anomaly_fold = np.arange(len(anomalies)) % folds
    plan_folds = []
    for j in range(folds):
        rest = pool[pool_fold != j]
        n_fold_val = max(1, round(len(rest) * defaults.VALIDATION_FRACTION))
        scored = np.concatenate([pool[pool_fold == j], anomalies[anomaly_fold == j]])
        plan_folds.append(Fold(np.sort(rest[n_fold_val:]), np.sort(rest[:n_fold_val]), np.sort(scored)))
    # Alternate shuffled normal rows between calibration and evaluation: disjoint halves, so the
    # evaluation measures thresholds set on other rows.
    calibration, held_out = pool[0::2], pool[1::2]
    n_tune = len(anomalies) // 2 if tune_anomalies else 0
    splits = Splits(
        train=np.sort(final_train),
        validation=np.sort(final_val),
        calibration=np.sort(calibration),
        tuning=np.sort(np.concatenate([calibration, anomalies[:n_tune]])),
        evaluation=np.sort(np.concatenate([held_out, anomalies[n_tune:]])),
    )
    return CrossFitPlan(splits, plan_folds)
