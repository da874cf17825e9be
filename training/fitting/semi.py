"""Few labels (`aeguard train --semi-supervised`): pretrain on every row, fine-tune under an anomaly head.

Labels are 1 (anomaly), 0 (normal) or unknown (:data:`training.data.tables.UNLABELLED`). The autoencoder
(ensemble) pretrains on the training rows not labelled anomalous: unlabelled rows are mostly
normal, and a reconstruction that learnt the known anomalies would hide them. A small head on
the first network's lower encoder layers and the reconstruction score then learns labelled
anomalies against labelled normal rows and the unlabelled rows that reconstruct well (presumed
normal; :func:`reliable_negatives`), while that network's encoder and decoder are fine-tuned with
it. The model file keeps its contract (see :mod:`training.models.semi`); thresholds are calibrated
on held-out labelled normal rows, or on held-out unlabelled rows when too few are labelled.
docs/semi-supervised.md has the design, the refusals and the benchmark.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from service.artifact import Threshold
from service.errors import DataError
from training import defaults
from training.data.splits import Splits
from training.data.tables import UNLABELLED
from training.fitting.fit import FitResult
from training.models.ae import ScoringGraph
from training.models.semi import FineTuneConfig, SemiSupervisedGraph, build_semi_graph, fine_tune_graph

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
        1, 0 or :data:`~training.data.tables.UNLABELLED` per row.
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


@dataclass
class FineTuned:
    """The graph after the supervised phase, and how that phase went."""

    graph: SemiSupervisedGraph
    negatives: np.ndarray
    losses: list[float]
    seconds: float


def fine_tune(
    base: ScoringGraph, x: np.ndarray, labels: np.ndarray, split: SemiSplits, pretrain: np.ndarray,
    config: FineTuneConfig,
) -> FineTuned:  # fmt: skip
    """Put the anomaly head on the pretrained graph, weigh the reconstruction evidence, fine-tune.

    The head's skip weight starts at :func:`reconstruction_evidence`; its negatives are
    :func:`reliable_negatives`.
    """
    graph = build_semi_graph(base, x[pretrain])
    evidence = reconstruction_evidence(
        reconstruction_scores(graph, x[split.train_negative]),
        reconstruction_scores(graph, x[split.train_positive]),
    )
    graph.head.alpha.fill_(evidence)
    negatives = reliable_negatives(graph, x, split.train_negative, labels, evidence)
    started = time.perf_counter()
    losses = fine_tune_graph(graph, x[negatives], x[split.train_positive], config)
    return FineTuned(graph, negatives, losses, time.perf_counter() - started)


def held_out_figures(split: SemiSplits, scores: np.ndarray, thresholds: list[Threshold]) -> dict[str, Any]:
    """What the evaluation adds for few labels: what it was computed on, and the unlabelled rows flagged."""
    figures: dict[str, Any] = {
        "evaluated_on": "held-out labelled rows"
        if split.evaluation_labelled
        else "every held-out row, unlabelled included (too few labelled anomalies to hold some out)"
    }
    if len(split.held_out_unlabelled):
        held = scores[split.held_out_unlabelled]
        figures["unlabelled_flagged_rate"] = {t.name: float((held >= t.value).mean()) for t in thresholds}
    return figures


def head_section(graph: SemiSupervisedGraph, member_fits: list[FitResult]) -> dict[str, Any]:
    """What the metadata's ``architecture`` section says differently of an autoencoder under a head."""
    head = graph.head
    return {
        "kind": "dense_autoencoder_with_anomaly_head",
        "weight_count": sum(f.model.weight_count() for f in member_fits)
        + sum(p.numel() for n, p in head.named_parameters() if n.endswith("weight")),
        "parameter_count": sum(p.numel() for p in graph.parameters()),
        "head": {
            "inputs": "the first network's codes and the log reconstruction score, standardised",
            "layer_sizes": [m.in_features for m in head.mlp if isinstance(m, torch.nn.Linear)] + [1],
            "activation": member_fits[0].model.activation_name,
            "skip": "alpha * standardised log reconstruction score; the MLP's output starts at 0",
            "alpha": float(head.alpha),
        },
        "score": "-log(1 - p) = softplus(logit), p the anomaly head's probability; feature_errors, codes "
        "and reconstruction from the autoencoder"
        + (f" ({len(member_fits)} networks averaged)" if len(member_fits) > 1 else ""),
    }


def training_section(
    labels: np.ndarray, split: SemiSplits, tuned: FineTuned, pretrain: np.ndarray, config: FineTuneConfig
) -> dict[str, Any]:
    """The few-label entries of the metadata's ``training`` section."""
    counts = label_counts(labels)
    return {
        "labelled": True,
        "anomalies_in_data": counts["labelled_anomalies"],
        "contaminated": False,
        "semi_supervised": {
            **counts,
            "calibrated_on": split.calibrated_on,
            "calibration_rows": len(split.splits.calibration),
            "pretrained_on_rows": len(pretrain),
            "head_positive_rows": len(split.train_positive),
            "head_negative_rows": len(tuned.negatives),
            "negatives": "labelled normal training rows, and unlabelled ones whose reconstruction score "
            f"is below its {defaults.SEMI_RELIABLE_NEGATIVE_QUANTILE:g} quantile (presumed normal)",
            "fine_tune": asdict(config),
            "fine_tune_final_loss": float(np.mean(tuned.losses[-20:])) if tuned.losses else None,
            "fine_tune_s": round(tuned.seconds, 3),
        },
        "split_rows": {**split.splits.counts(), "train_used": len(pretrain)},
    }
