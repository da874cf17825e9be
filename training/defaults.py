"""Default training settings in one place, so tuning them for detection quality touches one file."""

from __future__ import annotations

import math

#: Threshold specs used when none are given: the lowest one decides ``is_anomaly``. A quantile q
#: needs at least 1 / (1 - q) calibration rows (15 % of the normal rows) to be more than the largest
#: calibration score: q0.995 needs 200, about 1 350 normal rows in the data; q0.999, the default
#: until 2026-11-30, needed 1 000 and sat at the largest score even for the built-in telemetry model
#: (975 calibration rows), where q0.995 raised the critical level's recall from 0.39 to 0.66 at
#: precision 0.994 instead of 1.000 (docs/training.md, "Thresholds").
DEFAULT_THRESHOLDS: tuple[str, ...] = ("warning=q0.99", "critical=q0.995")

#: Optimiser and loop settings.
MAX_EPOCHS = 200
PATIENCE = 10
BATCH_SIZE = 256
#: Adam's learning rate. 1e-2 matched 3e-3 and beat 1e-3 on the ADBench means (0.919 / 0.919 / 0.916,
#: whitened scores) and stops earliest, so it also fits fastest (docs/training.md, "Defaults").
LEARNING_RATE = 1e-2
WEIGHT_DECAY = 0.0
SEED = 0
#: Hidden-layer activations a network can use; the coding and output layers are linear.
ACTIVATION_NAMES: tuple[str, ...] = ("relu", "elu", "tanh", "gelu")
#: Hidden-layer activation. A comma-separated list trains one network per entry on the same rows
#: (seeds ``SEED``, ``SEED + 1``, ...) and averages their scores in the one ONNX graph. Networks
#: that differ in activation and coding size err differently, so their average finds more: on the
#: ADBench means, tanh + gelu 0.923 vs 0.915 for one elu network and 0.919 for two; the same pair
#: with the gelu network's coding twice as wide (MEMBER_CODING_FACTORS) 0.927; three networks
#: (tanh k, gelu 2k, tanh k) sharing the same step budget 0.928 (docs/training.md, "Defaults").
ACTIVATION = "tanh,gelu,tanh"


def activation_list(spec: str) -> list[str]:
    """The networks' activations in a comma-separated ``spec``: stripped, empty entries dropped."""
    return [a.strip() for a in spec.split(",") if a.strip()]


def unknown_activations(spec: str) -> list[str]:
    """The entries of ``spec`` (as written) that are not in :data:`ACTIVATION_NAMES`; empty ones included."""
    return [a for a in spec.split(",") if a.strip() not in ACTIVATION_NAMES]


#: The network kind trained when none is named (a name in :data:`training.registry.ARCHITECTURES`).
ARCHITECTURE = "ae"
#: VAE only: weight of the KL term in the loss (1 = the ELBO) and the epochs over which it rises
#: linearly from 0 to that weight (see :func:`training.models.vae.kl_weight_at`).
KL_WEIGHT = 1.0
KL_WARMUP_EPOCHS = 10


#: torch intra-op threads. Small dense nets run fastest on one thread (measured: a step took
#: 7 ms on 1 thread vs 19 ms on 2 on a busy 2-core machine), and one thread keeps runs reproducible.
TORCH_THREADS = 1
#: Budget of optimiser steps per fit, shared equally by an ensemble's members (each member's
#: training ends after the epoch that reaches its share): bounds the fit time of large data sets;
#: small ones still stop on MAX_EPOCHS or early stopping. 4 500 = 1 500 per default member.
MAX_STEPS = 4500
#: Score the Mahalanobis distance of the reconstruction residual (ZCA-whitened with a Ledoit-Wolf
#: covariance of normal rows' residuals) rather than the plain squared error. On the 15 ADBench
#: sets it raised the mean ROC-AUC (docs/quality.md).
WHITEN_ERRORS = True
#: Smallest eigenvalue of the residual covariance, relative to the largest, before inverting.
WHITENING_EIGEN_FLOOR = 1e-6
#: Fewest epochs before early stopping may stop the run.
MIN_EPOCHS = 5
#: Relative improvement of the validation loss that counts as progress for early stopping.
MIN_DELTA = 1e-4

#: Fractions of the training pool (normal rows) for each split; the rest is the evaluation split.
TRAIN_FRACTION = 0.6
VALIDATION_FRACTION = 0.1
CALIBRATION_FRACTION = 0.15
#: Cross-fitting folds (training.fitting.crossfit): each fold's networks score the rows they never saw, for
#: thresholds and evaluation, and the served networks train on all normal rows but the validation
#: slice. 0 or 1 = the plain split above.
CROSSFIT_FOLDS = 2
#: Fewest rows of the training pool accepted at all (each split needs rows).
MIN_ROWS = 10
#: Above this many training rows, the fit uses a seeded subsample (keeps training time bounded).
MAX_TRAIN_ROWS = 200_000

#: A scale below this (relative to the largest) is treated as a constant column: scaled by 1.
CONSTANT_STD = 1e-12

#: Parity tolerance torch vs onnxruntime: |torch - ort| <= ATOL + RTOL * |torch| on every output.
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-4

#: Identity check: warn when garbage reconstructs within this factor of real rows' error.
IDENTITY_RATIO_WARN = 2.0

#: Few labels (`--semi-supervised`, training/fitting/semi.py): optimiser steps, Adam learning rate, labelled
#: anomalies per step (drawn with replacement), weight of the reconstruction loss and the head's L2
#: penalty while the encoder is fine-tuned under the anomaly head (docs/semi-supervised.md).
SEMI_FINE_TUNE_STEPS = 300
SEMI_FINE_TUNE_LR = 1e-3
SEMI_POSITIVES_PER_STEP = 32
SEMI_RECONSTRUCTION_WEIGHT = 1.0
SEMI_HEAD_WEIGHT_DECAY = 1e-3
#: The head learns labelled anomalies against labelled normal rows and the unlabelled rows whose
#: reconstruction score is below this quantile (the rest may be hidden anomalies; 1 = keep all).
SEMI_RELIABLE_NEGATIVE_QUANTILE = 0.8
#: Share of presumed-normal rows that the labelled anomalies outscore on reconstruction, from
#: "no evidence" to "full evidence" that the reconstruction score detects them: it sets the weight
#: of that score in the head (0 to 1) and how many unlabelled rows it may exclude as hidden anomalies.
SEMI_EVIDENCE_RANGE = (0.5, 0.9)
#: Fewest held-out rows that thresholds may be calibrated on: labelled normal rows when the
#: calibration split holds this many, else unlabelled rows (presumed normal), else a refusal.
SEMI_MIN_CALIBRATION_ROWS = 20
#: With at least this many labelled anomalies, a quarter of them is held out for the evaluation
#: (and another quarter for an f1 threshold); with fewer, every one trains the head.
SEMI_MIN_HELD_OUT_ANOMALIES = 8


def default_coding_size(n_features: int) -> int:
    """Coding size derived from the number of features: ``round(sqrt(d))``, kept below ``d``.

    Parameters
    ----------
    n_features : int
        Number of input features ``d``.

    Returns
    -------
    int
        A coding size ``k`` with ``1 <= k < d`` (``k = 1`` when ``d = 1``).
    """
    k = max(1, round(math.sqrt(n_features)))
    return max(1, min(k, n_features - 1))


#: Coding widths of an ensemble's members when none is given: ``k``, ``2k``, ``k``, ``2k``, ... (each
#: below ``d``), with ``k`` from :func:`default_coding_size`. Networks that see the data through
#: codings of different widths err differently, so their average finds more (see
#: :func:`member_coding_sizes`).
MEMBER_CODING_FACTORS: tuple[int, ...] = (1, 2)


def member_coding_sizes(n_features: int, n_members: int) -> tuple[int, ...]:
    """Coding sizes of ``n_members`` ensemble members derived from ``d``.

    Member ``i`` gets ``MEMBER_CODING_FACTORS[i % len] * k``, kept below ``d``, where ``k`` is
    :func:`default_coding_size`. The first member keeps ``k``: its codings are the model's ``codes``.

    Parameters
    ----------
    n_features : int
        Number of input features ``d``.
    n_members : int
        Number of networks in the ensemble.

    Returns
    -------
    tuple of int
        One coding size per member, each in ``[1, max(1, d - 1)]``.
    """
    k = default_coding_size(n_features)
    cap = max(1, n_features - 1)
    factors = MEMBER_CODING_FACTORS
    return tuple(max(1, min(cap, factors[i % len(factors)] * k)) for i in range(n_members))


def default_hidden(n_features: int) -> list[int]:
    """Hidden-layer sizes between the input and the coding layer, derived from ``d``.

    Parameters
    ----------
    n_features : int
        Number of input features ``d``.

    Returns
    -------
    list of int
        One hidden layer of ``clip(4 * d, 32, 128)`` units: wider than ``clip(2 * d, 16, 128)`` for
        narrow data (on ADBench it helped the low-dimensional sets most: with elu alone, annthyroid
        0.899 -> 0.933 and mammography 0.847 -> 0.870), with the same cap, so wide data costs no
        more CPU than before.
    """
    return [int(min(128, max(32, 4 * n_features)))]
