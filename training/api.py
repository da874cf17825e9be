"""Train from arrays: the two trainers, short drivers over the steps of :mod:`training.pipeline`.

`aeguard train`, :class:`training.detector.AutoencoderDetector`, the built-in default and the tests
all call :func:`train_model`, so they cannot drift apart. With ``options.semi_supervised`` it hands
over to :func:`train_semi_supervised` (few labels: pretrain, then an anomaly head).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import InvalidInputError
from training.data.samples import RowContext
from training.data.windows import WindowOptions
from training.fitting import semi
from training.fitting.crossfit import CrossFitResult, crossfit
from training.fitting.fit import EpochCallback, FitResult, fit_ensemble
from training.models.semi import FineTuneConfig
from training.pipeline import (
    Outcome,
    architecture_section,
    build_graph,
    calibrate_and_evaluate,
    check_identity,
    export_model,
    finish,
    graph_scores,
    prepare,
    resolve_fit_config,
    set_threads,
    training_rows,
)
from training.registry import WINDOWED
from training.result import FitRequest, Fitted, TrainOptions, TrainResult

__all__ = [
    "TrainOptions",
    "TrainResult",
    "build_graph",
    "export_model",
    "graph_scores",
    "resolve_fit_config",
    "set_threads",
    "train_model",
    "train_semi_supervised",
    "train_windowed",
]


def train_model(
    x: np.ndarray,
    feature_names: list[str],
    out_path: str | Path | None,
    *,
    labels: np.ndarray | None = None,
    options: TrainOptions | None = None,
    on_epoch: EpochCallback | None = None,
    on_fit_end: Callable[[FitResult], None] | None = None,
    context: RowContext | None = None,
) -> TrainResult:
    """Fit an undercomplete autoencoder on ``x`` and export it as one ONNX file.

    Parameters
    ----------
    x : numpy.ndarray
        Raw rows ``[n, d]``, finite numbers.
    feature_names : list of str
        One unique name per column.
    out_path : str, Path or None
        Where to write the model (see :func:`training.pipeline.export_model`); ``None`` skips the export.
    labels : numpy.ndarray, optional
        0 = normal, 1 = anomaly. With labels, training uses normal rows only (unless
        ``options.contaminated``) and the evaluation reports ROC-AUC, PR-AUC, P/R/F1.
    options : TrainOptions, optional
        Everything else; defaults from :mod:`training.defaults`.
    on_epoch : callable, optional
        Progress hook ``(epoch, train_loss, validation_loss, best_epoch)``.
    on_fit_end : callable, optional
        Called with the first :class:`~training.fitting.fit.FitResult` once the networks are fitted.
    context : RowContext, optional
        Per-row time and series, for an architecture whose samples span several rows.

    Returns
    -------
    TrainResult
    """
    options = options or TrainOptions()
    if options.semi_supervised:
        if labels is None:
            raise InvalidInputError("semi-supervised training needs labels (1, 0 or empty per row)")
        return train_semi_supervised(
            x, feature_names, out_path, labels=labels, options=options,
            on_epoch=on_epoch, on_fit_end=on_fit_end,
        )  # fmt: skip
    run = prepare(x, feature_names, labels, options, context=context)
    y = run.samples.labels
    splits, plan = run.arch.split(run.split_request())
    fitted = (run.arch.fit or fit_rows)(run.fit_request(splits, plan, on_epoch))
    member_fits = fitted.member_fits
    if on_fit_end is not None:
        on_fit_end(member_fits[0])
    ev = splits.evaluation
    tune_labels, eval_labels = (None, None) if y is None else (y[splits.tuning], y[ev])
    thresholds, evaluation = calibrate_and_evaluate(run, fitted.scores, splits, tune_labels, eval_labels)
    evaluation.update(fitted.evaluation)
    whitened = member_fits[0].error_whitening is not None
    architecture = {**architecture_section(run, member_fits, whitened), **fitted.architecture}
    training = {
        "labelled": y is not None,
        "anomalies_in_data": int(y.sum()) if y is not None else None,
        "contaminated": options.contaminated,
        **fitted.training,
    }
    decided_by: dict[str, Any] = {"contaminated": options.contaminated}
    if run.samples.window:  # how samples span rows decides the model too
        decided_by["window"] = run.samples.window
    outcome = Outcome(
        fitted.graph, member_fits, splits, fitted.scores, thresholds, evaluation, architecture, training,
        decided_by=decided_by, labels=y,
    )  # fmt: skip
    return finish(run, outcome, out_path)


def fit_rows(request: FitRequest) -> Fitted:
    """The row-wise fit (an architecture's default ``fit``): the ensemble on the training rows (cross-fitted
    when there is a plan), wrapped with the scaler and the ``[d, d]`` whitening into a
    :class:`~training.models.ae.ScoringGraph`, and its identity check."""
    sx, splits, config = request.samples.x, request.splits, request.config
    train_rows = training_rows(splits.train, config.seed)
    member_fits, cross = _fit(request, train_rows)
    graph = build_graph(member_fits)
    # Cross-fitted: every sample's score comes from networks that never trained on it.
    scores = cross.scores if cross is not None else graph_scores(graph, sx)
    y, ev = request.samples.labels, splits.evaluation
    normal_eval = ev if y is None else ev[y[ev] == 0]
    probe = normal_eval if len(normal_eval) >= 2 else splits.calibration
    identity = check_identity(partial(graph_scores, graph), sx[probe], config.seed)
    training = {
        "split_rows": {**splits.counts(), "train_used": len(train_rows)},
        "crossfit": cross.describe() if cross is not None else None,
    }
    return Fitted(graph, member_fits, scores, training, evaluation={"identity_check": identity})


def _fit(request: FitRequest, train_rows: np.ndarray) -> tuple[list[FitResult], CrossFitResult | None]:
    """The served ensemble, cross-fitted when there is a plan (see :mod:`training.fitting.crossfit`)."""
    sx, splits, plan = request.samples.x, request.splits, request.plan
    if plan is None:
        return fit_ensemble(
            sx[train_rows], sx[splits.validation], request.config, build=request.build,
            on_epoch=request.on_epoch,
        ), None  # fmt: skip
    cross = crossfit(sx, plan, request.config, _score_fits, build=request.build, on_epoch=request.on_epoch)
    return cross.final, cross


def _score_fits(fits: list[FitResult], rows: np.ndarray) -> np.ndarray:
    return graph_scores(build_graph(fits), rows)


def train_windowed(
    x: np.ndarray,
    feature_names: list[str],
    out_path: str | Path | None,
    *,
    labels: np.ndarray | None = None,
    context: RowContext | None = None,
    window: WindowOptions | None = None,
    options: TrainOptions | None = None,
) -> TrainResult:
    """:func:`train_model` with the windowed entry (`aeguard train --window`): ``window`` is W (or
    ``auto``) and the gap rule, ``context`` the rows' time and series (docs/windows.md)."""
    options = options or TrainOptions()
    window = window or WindowOptions()
    context = replace(context or RowContext(), window=window.size, max_gap=window.max_gap)
    options = replace(options, fit=replace(options.fit, architecture=WINDOWED))
    return train_model(x, feature_names, out_path, labels=labels, options=options, context=context)


def train_semi_supervised(
    x: np.ndarray,
    feature_names: list[str],
    out_path: str | Path | None,
    *,
    labels: np.ndarray,
    options: TrainOptions,
    on_epoch: EpochCallback | None = None,
    on_fit_end: Callable[[FitResult], None] | None = None,
    fine_tune_config: FineTuneConfig | None = None,
) -> TrainResult:
    """Pretrain, fine-tune under the anomaly head, calibrate, evaluate, export (:mod:`training.fitting.semi`).

    Parameters
    ----------
    x : numpy.ndarray
        Raw rows ``[n, d]``.
    feature_names : list of str
        One name per column.
    out_path : str, Path or None
        Where to write the model; ``None`` skips the export.
    labels : numpy.ndarray
        1 = anomaly, 0 = normal, NaN or :data:`~training.data.tables.UNLABELLED` = unknown.
    options : TrainOptions
        As for :func:`train_model` (``contaminated`` does not apply).
    on_epoch, on_fit_end : callable, optional
        Progress hooks of the pretraining.
    fine_tune_config : FineTuneConfig, optional
        Settings of the supervised phase; default from :mod:`training.defaults` and the fit seed.

    Returns
    -------
    TrainResult
        ``labels`` are set when the evaluation split holds both classes, else ``None``.
    """
    run = prepare(x, feature_names, labels, options, allow_unlabelled=True)
    sx, y, config = run.samples.x, run.samples.labels, run.config
    assert y is not None
    split = semi.make_semi_splits(y, seed=config.seed, tune_anomalies=run.split_request().tune_anomalies)
    splits = split.splits
    pretrain = training_rows(split.pretrain, config.seed)
    member_fits = fit_ensemble(
        sx[pretrain], sx[splits.validation], config, build=run.arch.build, on_epoch=on_epoch
    )
    if on_fit_end is not None:
        on_fit_end(member_fits[0])
    tune = fine_tune_config or FineTuneConfig(seed=config.seed)
    tuned = semi.fine_tune(build_graph(member_fits), sx, y, split, pretrain, tune)
    graph = tuned.graph
    scores = graph_scores(graph, sx)
    eval_labels = y[splits.evaluation] if split.evaluation_labelled else None
    tune_labels = (y[splits.tuning] == 1).astype(np.int8)
    thresholds, evaluation = calibrate_and_evaluate(run, scores, splits, tune_labels, eval_labels)
    evaluation.update(semi.held_out_figures(split, scores, thresholds))
    evaluation["identity_check"] = check_identity(
        lambda rows: semi.reconstruction_scores(graph, rows), sx[splits.calibration], config.seed
    )
    architecture = architecture_section(run, member_fits, member_fits[0].error_whitening is not None)
    architecture.update(semi.head_section(graph, member_fits))
    training = semi.training_section(y, split, tuned, pretrain, tune)
    outcome = Outcome(
        graph, member_fits, splits, scores, thresholds, evaluation, architecture, training,
        decided_by={"semi_supervised": asdict(tune)}, labels=y if split.evaluation_labelled else None,
    )  # fmt: skip
    return finish(run, outcome, out_path)
