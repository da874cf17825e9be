"""Score drift: PSI of a sliding window of recent scores against the model's calibration quantiles.

The reference is ``metadata.score_distribution``: quantiles of the scores of held-out normal data.
Its distinct quantile values cut the score axis into bins whose expected share is known exactly
(the difference of neighbouring probabilities, plus the two tails). Live scores are binned the same
way over a fixed-size sliding window, and the Population Stability Index

    PSI = sum_i (actual_i - expected_i) * ln(actual_i / expected_i)

compares the two (0 = the same distribution; by the usual rule of thumb < 0.1 is stable,
0.1-0.2 moderate and > 0.2 significant drift). Shares are floored at ``EPSILON`` so empty bins
give a large but finite value. Transport-free; thread-safe.
"""

from __future__ import annotations

import bisect
import math
import threading

import numpy as np

from service.artifact import ScoreDistribution

#: Reference bins used at most (deciles): PSI's usual resolution.
DEFAULT_BINS = 10
#: Floor for bin shares, so an empty bin gives a large but finite PSI.
EPSILON = 1e-4


def reference_bins(dist: ScoreDistribution, max_bins: int = DEFAULT_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges and expected shares from calibration quantiles.

    Returns ``(edges, expected)``: ``edges`` are distinct quantile values, ascending; bin 0 is
    ``score <= edges[0]``, bin ``j`` is ``edges[j-1] < score <= edges[j]`` and the last bin is
    ``score > edges[-1]``, so there are ``len(edges) + 1`` bins and ``expected`` sums to 1.
    When the model stores more quantiles than ``max_bins`` allows, the edges nearest to the
    ``1/max_bins`` probability steps are kept: fine bins make PSI of a finite window biased
    upwards (many bins empty by chance), coarse ones keep it near 0 for undrifted scores.
    """
    values = np.asarray(dist.values, dtype=np.float64)
    probs = np.asarray(dist.probabilities, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    values, probs = values[order], np.maximum.accumulate(np.clip(probs[order], 0.0, 1.0))
    # A repeated value (ties in the calibration scores) keeps the highest probability: the CDF
    # is right-continuous, P(score <= v) is the last one.
    edges, last_index = np.unique(values[::-1], return_index=True)
    cdf = probs[::-1][last_index]
    cdf = np.maximum.accumulate(cdf)
    if len(edges) + 1 > max_bins:
        targets = np.arange(1, max_bins) / max_bins
        keep = np.unique(np.abs(cdf[None, :] - targets[:, None]).argmin(axis=1))
        edges, cdf = edges[keep], cdf[keep]
    expected = np.diff(np.concatenate(([0.0], cdf, [1.0])))
    return edges, expected


def psi(actual: np.ndarray, expected: np.ndarray, epsilon: float = EPSILON) -> float:
    """Population Stability Index between two share vectors of the same bins (each sums to 1)."""
    a = np.maximum(np.asarray(actual, dtype=np.float64), epsilon)
    e = np.maximum(np.asarray(expected, dtype=np.float64), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


class ScoreDrift:
    """PSI of the last ``window`` scores against a calibration distribution.

    ``add`` is cheap (a binary search per score and a ring-buffer update); ``value`` computes the
    PSI from the running bin counts, so it is meant for scrape time, not the request path.
    """

    def __init__(
        self,
        dist: ScoreDistribution,
        window: int = 10_000,
        min_samples: int = 100,
        max_bins: int = DEFAULT_BINS,
    ) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.edges, self.expected = reference_bins(dist, max_bins)
        self._edges_list = self.edges.tolist()
        self.window = window
        self.min_samples = min(min_samples, window)
        self._ring = np.zeros(window, dtype=np.int32)  # bin index of each remembered score
        self._counts = np.zeros(len(self.expected), dtype=np.int64)
        self._pos = 0  # next slot to overwrite
        self._filled = 0  # how many slots hold a score
        self._lock = threading.Lock()

    @property
    def n_samples(self) -> int:
        """How many scores the window holds now."""
        return self._filled

    def add(self, scores: np.ndarray | float) -> None:
        """Remember scores (newest last), forgetting the oldest beyond the window."""
        flat = scores.reshape(-1) if isinstance(scores, np.ndarray) else np.array([scores], dtype=np.float64)
        if flat.shape[0] == 1:
            # Fast path for batch-1 traffic: no numpy temporaries.
            b = bisect.bisect_left(self._edges_list, float(flat[0]))
            with self._lock:
                if self._filled == self.window:
                    self._counts[self._ring[self._pos]] -= 1
                else:
                    self._filled += 1
                self._ring[self._pos] = b
                self._counts[b] += 1
                self._pos = (self._pos + 1) % self.window
            return
        bins = np.searchsorted(self.edges, flat.astype(np.float64), side="left")
        if len(bins) > self.window:
            bins = bins[-self.window :]
        n = len(bins)
        with self._lock:
            idx = (self._pos + np.arange(n)) % self.window
            # Before the ring is full, slots at or past `_filled` are still empty.
            occupied = idx < self._filled
            if occupied.any():
                self._counts -= np.bincount(self._ring[idx[occupied]], minlength=len(self._counts))
            self._ring[idx] = bins
            self._counts += np.bincount(bins, minlength=len(self._counts))
            self._filled = min(self.window, self._filled + n)
            self._pos = (self._pos + n) % self.window

    def counts(self) -> np.ndarray:
        """How many of the window's scores fall in each reference bin (a copy)."""
        with self._lock:
            return self._counts.copy()

    def shares(self) -> np.ndarray:
        """The window's share of scores in each reference bin."""
        with self._lock:
            counts = self._counts.astype(np.float64)
        total = counts.sum()
        return counts / total if total else counts

    def value(self) -> float:
        """PSI of the window vs the reference; NaN while the window holds < ``min_samples`` scores."""
        if self._filled < self.min_samples or self._filled == 0:
            return math.nan
        return psi(self.shares(), self.expected)
