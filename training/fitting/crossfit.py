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

from training.data.folds import CrossFitPlan
from training.data.splits import cap_train_rows
from training.fitting.fit import EpochCallback, FitConfig, FitResult, NetworkBuilder, fit_ensemble


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
        """The metadata entry: how the model was cross-fitted (``training.fitting.crossfit``)."""
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
    build: NetworkBuilder,
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
    build : callable
        Makes each untrained network (the architecture's ``build``).
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
        train = cap_train_rows(fold.train, config.seed)
        fits = fit_ensemble(x[train], x[fold.validation], config, build=build)
        scores[fold.scored] = score(fits, x[fold.scored])
        epochs.append([len(f.train_loss) for f in fits])
    fold_s = time.perf_counter() - started
    train = cap_train_rows(plan.splits.train, config.seed)
    final = fit_ensemble(x[train], x[plan.splits.validation], config, build=build, on_epoch=on_epoch)
    final_s = time.perf_counter() - started - fold_s
    return CrossFitResult(final, scores, plan, epochs, fold_s, final_s)


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
