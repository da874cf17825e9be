"""Cross-fitting: the served network learns from (almost) every normal row, thresholds stay honest.

Without it, ``aeguard train`` fits its networks on 60 % of the normal rows and keeps 15 % aside to
calibrate the thresholds and 15 % to evaluate them. With ``k`` folds, each fold's ensemble trains
on the other folds' rows and scores its own fold (and its share of the anomalies): every row then
has an *out-of-fold* score from networks that never saw it. Thresholds come from the out-of-fold
scores of half the normal rows; the other half and the anomalies evaluate them. A final ensemble,
the one that is exported and served, trains on all normal rows but a validation slice for early
stopping. The fold ensembles use the final one's settings, so their out-of-fold scores stand in
for the final ensemble's scores on rows it has not seen; they train on fewer rows, so they tend
to score unseen normal rows a little higher, which makes the thresholds err on the side of fewer
false alarms.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import DataError
from training import defaults
from training.fit import EpochCallback, FitConfig, FitResult, fit_ensemble
from training.splits import Splits


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


@dataclass
class CrossFitResult:
    """The final (served) ensemble, the out-of-fold scores and what the cross-fit cost."""

    final: list[FitResult]
    #: Out-of-fold score per row (NaN for a row no fold scored: none with the plans above).
    scores: np.ndarray
    plan: CrossFitPlan
    fold_epochs: list[list[int]] = field(default_factory=list)
    fold_fit_s: float = 0.0
    final_fit_s: float = 0.0

    def describe(self) -> dict[str, Any]:
        """The metadata entry: how the model was cross-fitted (``training.crossfit``)."""
        return {
            "folds": len(self.plan.folds),
            "scores": "calibration, tuning and evaluation scores are out-of-fold: each row scored by "
            "networks (same settings) trained on the other folds, never on it",
            "final_train_rows": len(self.plan.splits.train),
            "final_validation_rows": len(self.plan.splits.validation),
            "fold_train_rows": [len(f.train) for f in self.plan.folds],
            "fold_member_epochs": self.fold_epochs,
            "fold_fit_s": round(self.fold_fit_s, 3),
            "final_fit_s": round(self.final_fit_s, 3),
        }


def crossfit(
    x: np.ndarray,
    plan: CrossFitPlan,
    config: FitConfig,
    score: Any,
    *,
    on_epoch: EpochCallback | None = None,
) -> CrossFitResult:
    """Fit one ensemble per fold, score each fold out-of-fold, then fit the final ensemble.

    Parameters
    ----------
    x : numpy.ndarray
        Raw rows ``[n, d]`` (float32).
    plan : CrossFitPlan
        From :func:`plan_crossfit`.
    config : FitConfig
        Resolved settings, used for every fold and for the final ensemble.
    score : callable
        ``score(fits, rows) -> scores``: the scores the exported graph of ``fits`` gives ``rows``.
    on_epoch : callable, optional
        Progress hook of the final fit only (the fold fits run silently).

    Returns
    -------
    CrossFitResult
    """
    scores = np.full(x.shape[0], np.nan, dtype=np.float32)
    epochs = []
    started = time.perf_counter()
    for fold in plan.folds:
        fits = fit_ensemble(x[_cap(fold.train, config.seed)], x[fold.validation], config)
        scores[fold.scored] = score(fits, x[fold.scored])
        epochs.append([len(f.train_loss) for f in fits])
    fold_s = time.perf_counter() - started
    train = _cap(plan.splits.train, config.seed)
    final = fit_ensemble(x[train], x[plan.splits.validation], config, on_epoch=on_epoch)
    final_s = time.perf_counter() - started - fold_s
    return CrossFitResult(final, scores, plan, epochs, fold_s, final_s)


def _cap(rows: np.ndarray, seed: int) -> np.ndarray:
    """A seeded subsample of ``rows`` above :data:`training.defaults.MAX_TRAIN_ROWS` (bounded fit time)."""
    if len(rows) <= defaults.MAX_TRAIN_ROWS:
        return rows
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, defaults.MAX_TRAIN_ROWS, replace=False))


def describe_crossfit(info: dict[str, Any] | None) -> str | None:
    """One line for the train summary and `aeguard inspect`; ``None`` when the model was not cross-fitted."""
    if not info:
        return None
    return (
        f"{info['folds']} folds: thresholds and evaluation from out-of-fold scores (networks that never "
        f"saw the row); served networks trained on {info['final_train_rows']} rows "
        f"(+{info['final_validation_rows']} for early stopping); fits: folds {info['fold_fit_s']:.1f} s, "
        f"final {info['final_fit_s']:.1f} s"
    )
