"""Few labels (`aeguard train --semi-supervised`): pretrain on every row, fine-tune under an anomaly head.

Labels are 1 (anomaly), 0 (normal) or unknown (:data:`training.data.UNLABELLED`). The autoencoder
(ensemble) pretrains on the training rows not labelled anomalous: unlabelled rows are mostly
normal, and a reconstruction that learnt the known anomalies would hide them. A small head on
the first network's lower encoder layers and the reconstruction score then learns labelled
anomalies against labelled normal rows and the unlabelled rows that reconstruct well (presumed
normal; :func:`reliable_negatives`), while that network's encoder and decoder are fine-tuned with
it. The model file keeps its contract (see :mod:`training.semi_model`); thresholds are calibrated
on held-out labelled normal rows, or on held-out unlabelled rows when too few are labelled.
docs/semi-supervised.md has the design, the refusals and the benchmark.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from service.artifact import ModelMetadata
from service.errors import DataError
from training import calibrate, defaults
from training.data import UNLABELLED, check_matrix
from training.evaluate import detection_metrics, identity_check
from training.fit import EpochCallback, FitResult, fit_ensemble, fit_summary
from training.model import ScoringGraph
from training.semi_model import FineTuneConfig, SemiSupervisedGraph, build_semi_graph, fine_tune_graph
from training.splits import Splits

if TYPE_CHECKING:
    from pathlib import Path

    from training.api import TrainOptions, TrainResult

log = logging.getLogger(__name__)

#: Where thresholds were calibrated, as metadata, summary and inspect say it.
CALIBRATED_ON_LABELLED = "held-out labelled normal rows"
CALIBRATED_ON_UNLABELLED = "held-out unlabelled rows (presumed normal: too few labelled normal rows)"


@dataclass(frozen=True)
class SemiSplits:
    """Row indices for semi-supervised training.

    ``splits`` is what the rest of the trainer reads (``calibration`` = the rows the thresholds
    come from, ``evaluation`` = held-out labelled rows, or every held-out row when those lack a
    class); ``train_negative`` / ``train_positive`` train the head, ``pretrain`` / ``validation``
    the autoencoder.
    """

    splits: Splits
    pretrain: np.ndarray
    train_negative: np.ndarray
    train_positive: np.ndarray
    calibrated_on: str
    evaluation_labelled: bool
    held_out_unlabelled: np.ndarray


def label_counts(labels: np.ndarray) -> dict[str, int]:
    """How many rows are labelled anomalous, labelled normal and unlabelled."""
    return {
        "labelled_anomalies": int((labels == 1).sum()),
        "labelled_normal": int((labels == 0).sum()),
        "unlabelled": int((labels == UNLABELLED).sum()),
    }


def check_semi_labels(labels: np.ndarray) -> None:
    """Refuse label sets that cannot train a head: no labelled anomaly, or too few other rows."""
    counts = label_counts(labels)
    if counts["labelled_anomalies"] == 0:
        raise DataError(
            "--semi-supervised needs at least one row labelled 1 (anomaly); the labels hold "
            f"{counts['labelled_normal']} normal (0) and {counts['unlabelled']} empty row(s). Without "
            "labelled anomalies, train without --semi-supervised"
        )
    others = counts["labelled_normal"] + counts["unlabelled"]
    if others < defaults.MIN_ROWS:
        raise DataError(
            f"training needs at least {defaults.MIN_ROWS} rows labelled normal (0) or unlabelled, got "
            f"{others} (and {counts['labelled_anomalies']} labelled anomalies)"
        )


def _four_way(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / calibration / evaluation parts of already shuffled rows (small groups train)."""
    n = len(rows)
    n_val = round(n * defaults.VALIDATION_FRACTION)
    n_cal = round(n * defaults.CALIBRATION_FRACTION)
    n_eval = round(
        n * (1 - defaults.TRAIN_FRACTION - defaults.VALIDATION_FRACTION - defaults.CALIBRATION_FRACTION)
    )
    n_train = n - n_val - n_cal - n_eval
    cuts = np.cumsum([n_train, n_val, n_cal])
    return rows[: cuts[0]], rows[cuts[0] : cuts[1]], rows[cuts[1] : cuts[2]], rows[cuts[2] :]


def make_semi_splits(labels: np.ndarray, *, seed: int, tune_anomalies: bool = False) -> SemiSplits:
    """Split labelled-normal and unlabelled rows 60/10/15/15 each; keep labelled anomalies for training.

    Parameters
    ----------
    labels : numpy.ndarray
        1, 0 or :data:`~training.data.UNLABELLED` per row.
    seed : int
        Seed of the shuffles.
    tune_anomalies : bool
        Also hold out labelled anomalies for an f1 threshold's tuning split.

    Returns
    -------
    SemiSplits

    Raises
    ------
    DataError
        When no labelled anomaly is present, or neither labelled normal nor unlabelled held-out
        rows reach :data:`training.defaults.SEMI_MIN_CALIBRATION_ROWS`.
    """
    check_semi_labels(labels)
    rng = np.random.default_rng(seed)
    normal = _four_way(rng.permutation(np.flatnonzero(labels == 0)))
    unlabelled = _four_way(rng.permutation(np.flatnonzero(labels == UNLABELLED)))
    anomalies = rng.permutation(np.flatnonzero(labels == 1))
    n_hold = len(anomalies) // 4 if len(anomalies) >= defaults.SEMI_MIN_HELD_OUT_ANOMALIES else 0
    eval_anomalies = anomalies[:n_hold]
    tune_anomalies_rows = anomalies[n_hold : 2 * n_hold] if tune_anomalies else anomalies[:0]
    train_anomalies = anomalies[n_hold + len(tune_anomalies_rows) :]

    minimum = defaults.SEMI_MIN_CALIBRATION_ROWS
    if len(normal[2]) >= minimum:
        calibration, calibrated_on = normal[2], CALIBRATED_ON_LABELLED
    elif len(unlabelled[2]) >= minimum:
        calibration, calibrated_on = unlabelled[2], CALIBRATED_ON_UNLABELLED
    else:
        raise DataError(
            f"too few labelled rows to calibrate the thresholds: the held-out calibration share "
            f"({defaults.CALIBRATION_FRACTION:.0%} of each group) has {len(normal[2])} labelled normal and "
            f"{len(unlabelled[2])} unlabelled row(s), and needs {minimum} of either; label more normal rows "
            "(0) or add unlabelled rows"
        )
    evaluation_labelled = len(normal[3]) > 0 and len(eval_anomalies) > 0
    held_out = np.concatenate([normal[3], unlabelled[3], eval_anomalies])
    evaluation = np.concatenate([normal[3], eval_anomalies]) if evaluation_labelled else held_out
    train_negative = np.concatenate([normal[0], unlabelled[0]])
    splits = Splits(
        train=np.sort(np.concatenate([train_negative, train_anomalies])),
        validation=np.sort(np.concatenate([normal[1], unlabelled[1]])),
        calibration=np.sort(calibration),
        tuning=np.sort(np.concatenate([calibration, tune_anomalies_rows])),
        evaluation=np.sort(evaluation),
    )
    return SemiSplits(
        splits=splits,
        pretrain=np.sort(train_negative),
        train_negative=np.sort(train_negative),
        train_positive=np.sort(train_anomalies),
        calibrated_on=calibrated_on,
        evaluation_labelled=evaluation_labelled,
        held_out_unlabelled=np.sort(unlabelled[3]),
    )


def reconstruction_scores(graph: SemiSupervisedGraph, x: np.ndarray) -> np.ndarray:
    """The autoencoder's own scores of raw rows (not the head's)."""
    with torch.no_grad():
        return graph.reconstruction_score(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()


def reconstruction_evidence(presumed_normal: np.ndarray, anomalous: np.ndarray) -> float:
    """How well the reconstruction score ranks the labelled anomalies, from 0 (no better than chance) to 1.

    The mean share of presumed-normal rows that each labelled anomaly outscores, mapped linearly
    from :data:`training.defaults.SEMI_EVIDENCE_RANGE` to [0, 1]. On data whose anomalies
    reconstruct as well as normal rows (optdigits: ROC-AUC 0.43 unsupervised), the head then
    learns from the labels alone instead of starting from a score that misleads it.
    """
    if len(anomalous) == 0 or len(presumed_normal) == 0:
        return 1.0
    ordered = np.sort(presumed_normal)
    share = float(np.mean(np.searchsorted(ordered, anomalous, side="left") / len(ordered)))
    low, high = defaults.SEMI_EVIDENCE_RANGE
    return float(np.clip((share - low) / (high - low), 0.0, 1.0))


def reliable_negatives(
    graph: SemiSupervisedGraph, x: np.ndarray, rows: np.ndarray, labels: np.ndarray, evidence: float
) -> np.ndarray:
    """The head's negatives: labelled normal rows, and unlabelled rows that reconstruct well.

    Unlabelled rows hide anomalies (a third of the rows in some data sets); learning them as
    normal would teach the head to lower exactly the scores it should raise. The pretrained
    autoencoder already ranks them, so the unlabelled rows above a quantile of its reconstruction
    score are left out (the first step of two-step positive-unlabelled learning): above
    :data:`training.defaults.SEMI_RELIABLE_NEGATIVE_QUANTILE` when the score ranks the labelled
    anomalies well (``evidence`` 1), none when it does not (``evidence`` 0), in between otherwise.
    """
    unlabelled = rows[labels[rows] == UNLABELLED]
    q = 1 - (1 - defaults.SEMI_RELIABLE_NEGATIVE_QUANTILE) * evidence
    if len(unlabelled) == 0 or q >= 1:
        return rows
    recon = reconstruction_scores(graph, x[unlabelled])
    keep = unlabelled[recon <= np.quantile(recon, q)]
    return np.sort(np.concatenate([rows[labels[rows] == 0], keep]))


def _graph_scores(graph: ScoringGraph, x: np.ndarray) -> np.ndarray:
    from training.api import graph_scores

    return graph_scores(graph, x)


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
    """Pretrain, fine-tune under the anomaly head, calibrate, evaluate and export (see the module doc).

    Parameters
    ----------
    x : numpy.ndarray
        Raw rows ``[n, d]``.
    feature_names : list of str
        One name per column.
    out_path : str, Path or None
        Where to write the model; ``None`` skips the export.
    labels : numpy.ndarray
        1 = anomaly, 0 = normal, NaN or :data:`~training.data.UNLABELLED` = unknown.
    options : TrainOptions
        As for :func:`training.api.train_model` (``contaminated`` does not apply).
    on_epoch, on_fit_end : callable, optional
        Progress hooks of the pretraining.
    fine_tune_config : FineTuneConfig, optional
        Settings of the supervised phase; default from :mod:`training.defaults` and the fit seed.

    Returns
    -------
    TrainResult
        ``labels`` are set when the evaluation split holds both classes, else ``None``.
    """
    from training.api import (
        TrainResult,
        export_model,
        fingerprint,
        library_versions,
        resolve_fit_config,
        set_threads,
    )
    from training.api import _json_safe as json_safe

    started = time.perf_counter()
    x, y = check_matrix(x, feature_names, labels, allow_unlabelled=True)
    assert y is not None
    specs = calibrate.parse_threshold_specs(options.thresholds)
    config = resolve_fit_config(x.shape[1], options.fit, options.allow_overcomplete)
    semi = make_semi_splits(y, seed=config.seed, tune_anomalies=any(s.method == "f1" for s in specs))
    splits = semi.splits
    set_threads()
    pretrain = semi.pretrain
    if len(pretrain) > defaults.MAX_TRAIN_ROWS:
        rng = np.random.default_rng(config.seed)
        pretrain = np.sort(rng.choice(pretrain, defaults.MAX_TRAIN_ROWS, replace=False))
    member_fits = fit_ensemble(x[pretrain], x[splits.validation], config, on_epoch=on_epoch)
    fitted = member_fits[0]
    if on_fit_end is not None:
        on_fit_end(fitted)
    whitening = None
    if fitted.error_whitening is not None:
        whitening = [
            torch.from_numpy(f.error_whitening) for f in member_fits if f.error_whitening is not None
        ]
    base = ScoringGraph(
        [f.model for f in member_fits],
        torch.from_numpy(fitted.mean),
        torch.from_numpy(fitted.scale),
        whitening,
    ).eval()
    graph = build_semi_graph(base, x[pretrain])
    evidence = reconstruction_evidence(
        reconstruction_scores(graph, x[semi.train_negative]),
        reconstruction_scores(graph, x[semi.train_positive]),
    )
    graph.head.alpha.fill_(evidence)
    negatives = reliable_negatives(graph, x, semi.train_negative, y, evidence)
    tune = fine_tune_config or FineTuneConfig(seed=config.seed)
    tune_started = time.perf_counter()
    losses = fine_tune_graph(graph, x[negatives], x[semi.train_positive], tune)
    tune_s = time.perf_counter() - tune_started
    scores = _graph_scores(graph, x)

    thresholds = calibrate.compute_thresholds(
        specs, scores[splits.calibration], scores[splits.tuning], (y[splits.tuning] == 1).astype(np.int8)
    )
    eval_labels = y[splits.evaluation] if semi.evaluation_labelled else None
    evaluation = detection_metrics(scores[splits.evaluation], eval_labels, thresholds)
    evaluation["split"] = "evaluation"
    evaluation["evaluated_on"] = (
        "held-out labelled rows"
        if semi.evaluation_labelled
        else "every held-out row, unlabelled included (too few labelled anomalies to hold some out)"
    )
    if len(semi.held_out_unlabelled):
        held = scores[semi.held_out_unlabelled]
        evaluation["unlabelled_flagged_rate"] = {t.name: float((held >= t.value).mean()) for t in thresholds}

    evaluation["identity_check"] = identity_check(
        lambda rows: reconstruction_scores(graph, rows), x[splits.calibration], config.seed
    )

    counts = label_counts(y)
    fp = fingerprint(x, feature_names)
    option_doc = {
        "fit": asdict(config),
        "thresholds": list(options.thresholds),
        "semi_supervised": asdict(tune),
    }
    version = (
        options.version
        or hashlib.sha256((fp + json.dumps(option_doc, sort_keys=True)).encode()).hexdigest()[:12]
    )
    d = x.shape[1]
    head = graph.head
    metadata = ModelMetadata(
        name=options.name,
        version=version,
        feature_names=list(feature_names),
        coding_size=int(config.coding_size or 0),
        thresholds=thresholds,
        score_distribution=calibrate.score_distribution(scores[splits.calibration]),
        architecture={
            "kind": "dense_autoencoder_with_anomaly_head",
            "layer_sizes": fitted.model.sizes,
            "hidden": list(config.hidden or []),
            "coding_size": config.coding_size,
            "activation": config.activation,
            "tied_weights": config.tied_weights,
            "denoise_sigma": config.denoise_sigma,
            "members": len(member_fits),
            "member_layer_sizes": [f.model.sizes for f in member_fits],
            "weight_count": sum(f.model.weight_count() for f in member_fits)
            + sum(p.numel() for n, p in head.named_parameters() if n.endswith("weight")),
            "parameter_count": sum(p.numel() for p in graph.parameters()),
            "scaler": "standard (mean / std; constant columns scaled by 1)",
            "head": {
                "inputs": "the first network's codes and the log reconstruction score, standardised",
                "layer_sizes": [m.in_features for m in head.mlp if isinstance(m, torch.nn.Linear)] + [1],
                "activation": fitted.model.activation_name,
                "skip": "alpha * standardised log reconstruction score; the MLP's output starts at 0",
                "alpha": float(head.alpha),
            },
            "score": "-log(1 - p) = softplus(logit), p the anomaly head's probability; feature_errors, codes "
            "and reconstruction from the autoencoder"
            + (f" ({len(member_fits)} networks averaged)" if len(member_fits) > 1 else ""),
            "undercomplete": all(f.model.sizes[-1] < d for f in member_fits),
        },
        training={
            "fingerprint_sha256": fp,
            "source": options.source,
            "rows": int(x.shape[0]),
            "labelled": True,
            "anomalies_in_data": counts["labelled_anomalies"],
            "contaminated": False,
            "semi_supervised": {
                **counts,
                "calibrated_on": semi.calibrated_on,
                "calibration_rows": len(splits.calibration),
                "pretrained_on_rows": len(pretrain),
                "head_positive_rows": len(semi.train_positive),
                "head_negative_rows": len(negatives),
                "negatives": "labelled normal training rows, and unlabelled ones whose reconstruction score "
                f"is below its {defaults.SEMI_RELIABLE_NEGATIVE_QUANTILE:g} quantile (presumed normal)",
                "fine_tune": asdict(tune),
                "fine_tune_final_loss": float(np.mean(losses[-20:])) if losses else None,
                "fine_tune_s": round(tune_s, 3),
            },
            "split_rows": {**splits.counts(), "train_used": len(pretrain)},
            **fit_summary(config, member_fits),
            "threshold_specs": list(options.thresholds),
            "duration_s": round(time.perf_counter() - started, 3),
        },
        evaluation=json_safe(evaluation),
        versions=library_versions(),
        created_at=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    )
    result = TrainResult(
        path=None,
        metadata=metadata,
        fit=fitted,
        graph=graph,
        splits=splits,
        scores=scores,
        x=x,
        labels=y if semi.evaluation_labelled else None,
        feature_names=list(feature_names),
        duration_s=time.perf_counter() - started,
        fit_seed=config.seed,
        member_fits=list(member_fits),
    )
    if out_path is not None:
        export_model(result, out_path)
    return result
