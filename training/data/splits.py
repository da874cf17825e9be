"""Seeded splits of a data set into train / validation / calibration / tuning / evaluation rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.errors import DataError
from training import defaults


@dataclass(frozen=True)
class Splits:
    """Row indices of each split (into the loaded data set).

    ``train`` fits the weights, ``validation`` stops early, ``calibration`` (normal rows) sets
    quantile / fpr thresholds, ``tuning`` (calibration plus some anomalies) sets f1 thresholds,
    ``evaluation`` (held-out normal rows plus the other anomalies) measures detection quality.
    """

    train: np.ndarray
    validation: np.ndarray
    calibration: np.ndarray
    tuning: np.ndarray
    evaluation: np.ndarray

    def counts(self) -> dict[str, int]:
        return {
            k: len(getattr(self, k)) for k in ("train", "validation", "calibration", "tuning", "evaluation")
        }


def make_splits(
    n_rows: int,
    labels: np.ndarray | None,
    *,
    seed: int,
    contaminated: bool = False,
    tune_anomalies: bool = False,
) -> Splits:
    """Split rows by a seeded shuffle.

    Parameters
    ----------
    n_rows : int
        Rows in the data set.
    labels : numpy.ndarray or None
        0 = normal, 1 = anomaly. Without labels every row is treated as normal.
    seed : int
        Seed of the shuffle.
    contaminated : bool
        Train on all rows (anomalies included) instead of normal rows only.
    tune_anomalies : bool
        Send half the anomalies to the tuning split (for f1 thresholds); otherwise all go to
        the evaluation split.

    Returns
    -------
    Splits

    Raises
    ------
    DataError
        When too few rows are available for training.
    """
    rng = np.random.default_rng(seed)
    idx = np.arange(n_rows)
    if labels is None or contaminated:
        pool, anomalies = idx, idx[:0]
    else:
        pool, anomalies = idx[labels == 0], idx[labels == 1]
    if len(pool) < defaults.MIN_ROWS:
        what = "rows" if labels is None or contaminated else "normal rows (label 0)"
        raise DataError(
            f"training needs at least {defaults.MIN_ROWS} {what}, got {len(pool)} "
            f"(of {n_rows} row(s) in the file)"
        )
    pool = rng.permutation(pool)
    anomalies = rng.permutation(anomalies)
    n = len(pool)
    n_val = max(1, round(n * defaults.VALIDATION_FRACTION))
    n_cal = max(1, round(n * defaults.CALIBRATION_FRACTION))
    n_train = max(1, round(n * defaults.TRAIN_FRACTION))
    n_train = min(n_train, n - n_val - n_cal)
    train = pool[:n_train]
    val = pool[n_train : n_train + n_val]
    cal = pool[n_train + n_val : n_train + n_val + n_cal]
    test = pool[n_train + n_val + n_cal :]
    n_tune = len(anomalies) // 2 if tune_anomalies else 0
    tuning = np.concatenate([cal, anomalies[:n_tune]])
    evaluation = np.concatenate([test, anomalies[n_tune:]])
    return Splits(np.sort(train), np.sort(val), np.sort(cal), np.sort(tuning), np.sort(evaluation))


def cap_train_rows(rows: np.ndarray, seed: int) -> np.ndarray:
    """A seeded subsample of ``rows`` above :data:`training.defaults.MAX_TRAIN_ROWS` (bounded fit time)."""
    if len(rows) <= defaults.MAX_TRAIN_ROWS:
        return rows
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, defaults.MAX_TRAIN_ROWS, replace=False))
