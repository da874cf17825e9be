"""Scoring rows with a windowed model: rows -> windows (:mod:`service.windows`) -> one verdict per row.

The server (one request, or a stream's carried state) and the batch job (carried across chunks)
call :func:`score_rows` with their own :class:`~service.windows.WindowBuilder`, so they agree on
which rows are scored and on every score. Nothing here knows about gRPC, files or Spark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service import artifact
from service.errors import InvalidInputError, truncate
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
    """A scorer and one :class:`WindowBuilder` per series, carried over a run of calls: the batch job's
    engines (its ``SeriesScorer``), where each series' rows continue from one chunk to the next.

    Rows come grouped by series, and each series' windows go to onnxruntime as they are built, one
    call per series and chunk: only the scores are put back in row order (cheaper than moving windows).
    """

    def __init__(self, scorer: Scorer) -> None:
        if scorer.window is None:
            raise ValueError(f"{scorer.source} is a row-wise model; it has no windows to carry")
        self.scorer = scorer
        self.spec = scorer.window
        self._builders: dict[object, WindowBuilder] = {}

    def score_rows(
        self,
        x: np.ndarray,
        groups: list[tuple[object, np.ndarray]],
        times: np.ndarray | None,
        with_feature_errors: bool,
    ) -> RowScores:
        """Rows ``x`` ``[n, d]`` grouped as ``(series key, row indices in order)``; times in seconds."""
        x = check_row_matrix(x, self.scorer.metadata)
        batches, owners, gaps = [], [], 0
        for key, idx in groups:
            builder = self._builders.get(key)
            if builder is None:
                builder = self._builders[key] = WindowBuilder(self.spec, x.shape[1])
            try:
                windows = builder.add(x[idx], times=None if times is None else times[idx])
            except InvalidInputError as exc:
                raise InvalidInputError(name_series(exc.message, key)) from None
            gaps += windows.gaps
            if len(windows.rows):  # one onnxruntime call per series: no copy of all windows into one
                batches.append(self._score_windows(windows.samples, with_feature_errors))
                owners.append(idx[windows.rows])
        scored = np.zeros(len(x), dtype=bool)
        if not owners:
            return RowScores(empty_batch(x.shape[1], with_feature_errors), scored, gaps)
        rows = np.concatenate(owners)
        scored[rows] = True
        order = np.argsort(rows, kind="stable")
        fe = [b.feature_errors for b in batches]
        batch = ScoreBatch(
            np.concatenate([b.score for b in batches])[order],
            np.concatenate([b.normalized_score for b in batches])[order],
            np.concatenate([b.severity_level for b in batches])[order],
            np.concatenate([b.is_anomaly for b in batches])[order],
            None if fe[0] is None else np.concatenate(fe)[order],  # type: ignore[arg-type]
        )
        return RowScores(batch, scored, gaps)

    def _score_windows(self, samples: np.ndarray, with_feature_errors: bool) -> ScoreBatch:
        """:meth:`Scorer.score` without its value checks: every row of these windows passed
        :func:`check_row_matrix` already, and a window holds W copies of each row (a second pass over
        20x the data costs as much as a tenth of onnxruntime's own time on a small network)."""
        names = [artifact.OUTPUT_SCORE]
        if with_feature_errors:
            names.append(artifact.OUTPUT_FEATURE_ERRORS)
        out = self.scorer.session.run(names, {artifact.INPUT_NAME: samples})
        return self.scorer.classify(out[0], out[1] if with_feature_errors else None)

    def forget(self, key: object) -> None:
        """Restart one series' window (its next rows warm up again)."""
        self._builders.pop(key, None)


def name_series(message: str, key: object) -> str:
    """A :class:`WindowBuilder` message about an unnamed series (``series: ...``) naming ``key``."""
    if key is None or not message.startswith("series:"):
        return message
    return f"series {truncate(str(key), 80)!r}:" + message[len("series:") :]
