"""Scoring rows with a windowed model: rows -> windows (:mod:`service.windows`) -> one verdict per row.

The server (one request, or a stream's carried state) and the batch job (carried across chunks)
call :func:`score_rows` with their own :class:`~service.windows.WindowBuilder`, so they agree on
which rows are scored and on every score. Nothing here knows about gRPC, files or Spark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.scorer import ScoreBatch, Scorer, check_row_matrix
from service.windows import WindowBuilder


@dataclass(frozen=True)
class RowScores:
    """The verdicts on ``n`` rows of a windowed model: scores for the rows that have a window."""

    batch: ScoreBatch
    """One entry per scored row (``scored`` True), in row order."""
    scored: np.ndarray
    """``[n]`` bool: True where the row has a full window (and so a score); False = warm-up."""
    gaps: int
    """Gaps found among these rows (each restarts its series' window)."""

    @property
    def warm_up(self) -> np.ndarray:
        """``[n]`` bool: the rows without a score."""
        return ~self.scored

    def expanded(self) -> ScoreBatch:
        """The verdicts as ``n`` entries: warm-up rows get NaN scores and errors, level 0, no anomaly."""
        n, batch = len(self.scored), self.batch
        if len(batch.score) == n:
            return batch
        score = np.full(n, np.nan, dtype=np.float32)
        normalized = np.full(n, np.nan, dtype=np.float32)
        level = np.zeros(n, dtype=batch.severity_level.dtype)
        anomaly = np.zeros(n, dtype=bool)
        score[self.scored] = batch.score
        normalized[self.scored] = batch.normalized_score
        level[self.scored] = batch.severity_level
        anomaly[self.scored] = batch.is_anomaly
        fe = None
        if batch.feature_errors is not None:
            fe = np.full((n, batch.feature_errors.shape[1]), np.nan, dtype=np.float32)
            fe[self.scored] = batch.feature_errors
        return ScoreBatch(score, normalized, level, anomaly, fe)


def empty_batch(n_features: int, with_feature_errors: bool) -> ScoreBatch:
    """A :class:`ScoreBatch` of no rows."""
    empty = np.zeros(0, dtype=np.float32)
    fe = np.zeros((0, n_features), dtype=np.float32) if with_feature_errors else None
    return ScoreBatch(empty, empty, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), fe)


def score_rows(
    scorer: Scorer,
    builder: WindowBuilder,
    x: np.ndarray,
    *,
    series: np.ndarray | None = None,
    times: np.ndarray | None = None,
    with_feature_errors: bool = False,
) -> RowScores:
    """Score rows ``x`` ``[n, d]`` of a windowed model, continuing the windows ``builder`` carries.

    Rows are checked (width, finite values) before they join a window, so an error names the row
    as the client sent it and leaves the builder's state as it was. ``series`` (per-row keys) and
    ``times`` (seconds) are :meth:`WindowBuilder.add`'s.
    """
    x = check_row_matrix(x, scorer.metadata)
    windows = builder.add(x, series=series, times=times)
    if len(windows.rows):
        batch = scorer.score(windows.samples, with_feature_errors=with_feature_errors)
    else:
        batch = empty_batch(scorer.metadata.n_features, with_feature_errors)
    return RowScores(batch, windows.scored_mask(), windows.gaps)


class CarriedWindows:
    """One scorer and one :class:`WindowBuilder` for a run of calls: the batch job's engines, where each
    series' rows continue from one chunk to the next (the batch job's ``SeriesScorer``)."""

    def __init__(self, scorer: Scorer) -> None:
        if scorer.window is None:
            raise ValueError(f"{scorer.source} is a row-wise model; it has no windows to carry")
        self.scorer = scorer
        self.builder = WindowBuilder(scorer.window, scorer.metadata.n_features)

    def score_rows(
        self, x: np.ndarray, series: np.ndarray | None, times: np.ndarray | None, with_feature_errors: bool
    ) -> RowScores:
        return score_rows(
            self.scorer, self.builder, x, series=series, times=times, with_feature_errors=with_feature_errors
        )

    def forget(self, key: object) -> None:
        self.builder.forget(key)
