"""Splits of overlapping windows, blocked in time: no row is ever on both sides of a split.

Windows overlap (window ``i`` spans its run's rows ``ends[i] - W + 1 .. ends[i]``), so a random
split or random cross-fitting folds would put one row into a training window and a calibration
window at once. Here every split is a contiguous block of windows in time order (rows sorted by
series, then time), and the windows that share a row with a block are purged from the other side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.errors import DataError
from training import defaults
from training.data.folds import CrossFitPlan
from training.data.samples import SplitRequest
from training.data.splits import Splits

#: Fewest training windows a fit accepts.
MIN_WINDOWS = 10


@dataclass(frozen=True)
class BlockedFold:
    """One fold: its network fits on ``train`` (early stopping on ``validation``) and scores ``scored``."""

    train: np.ndarray
    validation: np.ndarray
    scored: np.ndarray


def conflicts(ends: np.ndarray, block_ends: np.ndarray, window: int) -> np.ndarray:
    """``[m]`` bool: windows ending at sorted rows ``ends`` that share a row with a window ending at
    one of ``block_ends``. Windows never span a series boundary or a gap, so sharing a row means
    ending within ``W - 1`` rows of each other in the sorted order (conservative across a gap)."""
    if len(block_ends) == 0:
        return np.zeros(len(ends), dtype=bool)
    block_ends = np.sort(block_ends)
    # distance from each window's end to the nearest end in the block
    pos = np.searchsorted(block_ends, ends)
    left = np.abs(ends - block_ends[np.clip(pos - 1, 0, len(block_ends) - 1)])
    right = np.abs(block_ends[np.clip(pos, 0, len(block_ends) - 1)] - ends)
    return np.minimum(left, right) <= window - 1


def train_validation(candidates: np.ndarray, ends: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The last :data:`~training.defaults.VALIDATION_FRACTION` of ``candidates`` (in time) validates;
    the training windows that share a row with it are purged."""
    n_val = max(1, round(len(candidates) * defaults.VALIDATION_FRACTION))
    validation = candidates[-n_val:]
    rest = candidates[:-n_val]
    train = rest[~conflicts(ends[rest], ends[validation], window)]
    return train, validation


def blocked_folds(ends: np.ndarray, trainable: np.ndarray, window: int, folds: int) -> list[BlockedFold]:
    """``folds`` contiguous blocks of windows in time; fold ``j`` scores block ``j`` and trains on the
    trainable windows of the other blocks that share no row with it.

    Parameters
    ----------
    ends : numpy.ndarray
        Sorted row each window ends at, increasing.
    trainable : numpy.ndarray
        ``[m]`` bool: windows a network may train on (all rows normal).
    window : int
        W.
    folds : int
        Number of blocks, >= 2.
    """
    m = len(ends)
    bounds = np.linspace(0, m, folds + 1).astype(int)
    out = []
    for j in range(folds):
        block = np.arange(bounds[j], bounds[j + 1])
        candidates = np.flatnonzero(trainable & ~conflicts(ends, ends[block], window))
        if len(candidates) < MIN_WINDOWS:
            raise DataError(
                f"{folds} time-blocked folds of {m} windows leave fold {j + 1} {len(candidates)} training "
                f"windows (at least {MIN_WINDOWS}); use fewer --crossfit-folds, a smaller --window or "
                "more rows"
            )
        train, validation = train_validation(candidates, ends, window)
        out.append(BlockedFold(train, validation, block))
    return out


def shares_rows(ends: np.ndarray, a: np.ndarray, b: np.ndarray, window: int) -> bool:
    """Whether any window of ``a`` shares a row with a window of ``b`` (both index ``ends``)."""
    return bool(conflicts(ends[a], ends[b], window).any())


def window_splits(request: SplitRequest) -> tuple[Splits, CrossFitPlan | None]:
    """The windowed kind's ``split`` hook. Every window is scored out-of-fold by time-blocked folds
    (:func:`blocked_folds`, in the kind's fit), so the all-normal windows (every window when
    contaminated) train and calibrate, and every window tunes and evaluates; ``validation`` is
    empty here (each fold takes the last tenth of its own training windows)."""
    rows = request.detail
    trainable = np.ones(len(rows.ends), dtype=bool) if request.contaminated else rows.all_normal()
    normal, every = np.flatnonzero(trainable), np.arange(len(rows.ends))
    return Splits(normal, np.zeros(0, dtype=np.int64), normal, every, every), None
