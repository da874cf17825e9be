"""Rows to samples, and samples to splits: the two data hooks of an architecture (row-wise by default).

A row-wise network sees each row on its own: its samples are the rows, each sample's score belongs
to its own row, and the splits are the seeded ones of :mod:`training.data.splits` (or a
cross-fitting plan). An architecture whose samples are built from several rows (a window of
consecutive rows, issue 22) registers its own two hooks (:class:`training.registry.Architecture`)
with the same signatures: time-ordered samples per series, and splits blocked in time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.windows import DEFAULT_MAX_GAP
from training.data.folds import CrossFitPlan, plan_crossfit
from training.data.splits import Splits, make_splits


@dataclass(frozen=True)
class RowContext:
    """What the rows carry besides their feature values: per-row time and series, when known, and
    (for a windowed kind) how to window them. A row-wise kind reads none of it."""

    #: Per-row time in seconds (float), or ``None`` (rows are in order).
    time: np.ndarray | None = None
    #: Per-row series name, or ``None`` (one series).
    series: np.ndarray | None = None
    #: The columns ``time`` and ``series`` came from (recorded in a windowed model's metadata).
    time_column: str | None = None
    series_column: str | None = None
    #: A windowed kind's W (``--window``): a number of rows, or ``"auto"`` (chosen from the data).
    window: int | str = "auto"
    #: A windowed kind's gap rule: a jump of more than this many usual steps restarts the window.
    max_gap: float = DEFAULT_MAX_GAP


@dataclass(frozen=True)
class Samples:
    """What the network trains on and scores."""

    #: ``[n_samples, *sample_shape]`` float32: ``[n, d]`` rows for a row-wise kind.
    x: np.ndarray
    #: Labels per sample (1, 0 or unlabelled), or ``None``.
    labels: np.ndarray | None
    #: The input row each sample's score belongs to, ``[n_samples]``.
    rows: np.ndarray
    #: The metadata's ``window`` section describing how samples were built (``{}``: each row alone;
    #: a windowed kind: ``size``, ``step``, ``max_gap``, ``time_column``, ``series_column``).
    window: dict[str, Any] = field(default_factory=dict)
    #: The architecture's own view of the samples, for its split and fit hooks (a windowed kind: the
    #: time-ordered rows and where each window ends); ``None`` for a row-wise kind.
    detail: Any = None


@dataclass(frozen=True)
class SplitRequest:
    """What a split hook is asked for: the samples' labels and how the run splits."""

    n_samples: int
    labels: np.ndarray | None
    seed: int
    folds: int
    contaminated: bool
    tune_anomalies: bool
    #: :attr:`Samples.detail`.
    detail: Any = None


#: ``(rows [n, d], labels, context) -> Samples``.
SampleBuilder = Callable[[np.ndarray, np.ndarray | None, RowContext], Samples]
#: ``SplitRequest -> (splits, cross-fitting plan or None)``; the plan's ``splits`` when there is one.
Splitter = Callable[[SplitRequest], tuple[Splits, CrossFitPlan | None]]


def row_samples(x: np.ndarray, labels: np.ndarray | None, context: RowContext) -> Samples:
    """Each row is a sample; its score is its own (``context`` is not needed)."""
    return Samples(x, labels, np.arange(x.shape[0]))


def row_splits(request: SplitRequest) -> tuple[Splits, CrossFitPlan | None]:
    """Seeded row splits (:func:`~training.data.splits.make_splits`); a cross-fit plan if ``folds >= 2``."""
    if request.folds >= 2:
        plan = plan_crossfit(
            request.n_samples, request.labels, seed=request.seed, folds=request.folds,
            contaminated=request.contaminated, tune_anomalies=request.tune_anomalies,
        )  # fmt: skip
        return plan.splits, plan
    splits = make_splits(
        request.n_samples, request.labels, seed=request.seed,
        contaminated=request.contaminated, tune_anomalies=request.tune_anomalies,
    )  # fmt: skip
    return splits, None
