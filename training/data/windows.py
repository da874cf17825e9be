"""Rows to a windowed model's samples: time and series columns, order, gaps, W chosen from the data.

No torch here. The windows themselves come from :class:`service.windows.WindowBuilder`, the one
place every consumer builds them, so training sees exactly the samples the server and the batch
job will score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import DataError, InvalidInputError
from service.windows import WindowBuilder, WindowSpec
from training.data.tables import _read_table

#: ``--window auto`` keeps W within these bounds (see :func:`choose_window`).
AUTO_MIN_WINDOW = 8
AUTO_MAX_WINDOW = 32
#: ``--window auto``: W is the lag at which the values' autocorrelation first falls below this.
AUTO_ACF_LEVEL = 0.5
#: The largest W a user may ask for.
MAX_WINDOW = 512


@dataclass(frozen=True)
class RowContext:
    """Per-row time (seconds) and series key, when the data has them."""

    times: np.ndarray | None = None
    series: np.ndarray | None = None
    time_column: str | None = None
    series_column: str | None = None


@dataclass(frozen=True)
class WindowedRows:
    """A data set's rows in time order per series, and its windows."""

    #: ``[n, d]`` rows sorted by (series, time); ``order[i]`` is the input row of sorted row ``i``.
    x: np.ndarray
    labels: np.ndarray | None
    order: np.ndarray
    spec: WindowSpec
    #: ``[m, W, d]`` windows; ``ends[i]`` the sorted row window ``i`` ends at (its score's row).
    samples: np.ndarray
    ends: np.ndarray
    gaps: int
    n_series: int
    was_sorted: bool
    info: dict[str, Any] = field(default_factory=dict)

    def window_labels(self) -> np.ndarray | None:
        """A window's label is its last row's."""
        return None if self.labels is None else self.labels[self.ends]

    def all_normal(self) -> np.ndarray:
        """``[m]`` bool: no row of the window is labelled anomalous (all True without labels)."""
        if self.labels is None:
            return np.ones(len(self.ends), dtype=bool)
        w = self.spec.size
        bad = np.concatenate([[0], np.cumsum(self.labels == 1)])
        return (bad[self.ends + 1] - bad[self.ends + 1 - w]) == 0


def to_seconds(values: Any, column: str, source: str) -> np.ndarray:
    """A pyarrow column of times as float seconds: timestamps / dates / ISO text -> unix seconds,
    numbers taken as seconds. Raises :class:`DataError` naming the column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = values.type
    try:
        if pa.types.is_integer(t) or pa.types.is_floating(t):
            out = values.cast(pa.float64()).to_numpy(zero_copy_only=False)
        else:
            if pa.types.is_string(t) or pa.types.is_large_string(t):
                values = pc.strptime(values, format="%Y-%m-%dT%H:%M:%S", unit="us", error_is_null=True)
                if values.null_count:
                    raise ValueError("not ISO 8601 date-times (YYYY-MM-DDTHH:MM:SS[Z])")
            elif pa.types.is_date(t):
                values = values.cast(pa.timestamp("s"))
            stamp = values.cast(
                pa.timestamp("us", tz=None) if not getattr(values.type, "tz", None) else values.type
            )
            out = stamp.cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64) / 1e6
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise DataError(f"{source}: time column '{column}' ({t}) cannot be read as times: {exc}") from exc
    if not np.isfinite(out).all():
        raise DataError(
            f"{source}: time column '{column}' has {int((~np.isfinite(out)).sum())} empty value(s)"
        )
    return out


def load_context(path: str | Path, time_column: str | None, series_column: str | None) -> RowContext:
    """The time and series columns of a CSV / Parquet file (neither: an empty context)."""
    if not time_column and not series_column:
        return RowContext()
    p = Path(path)
    if p.suffix.lower() == ".npz":
        raise InvalidInputError(f"{p}: --time-column / --series-column need a CSV or Parquet file")
    table = _read_table(p)
    missing = [c for c in (time_column, series_column) if c and c not in table.column_names]
    if missing:
        raise DataError(
            f"{p}: no column(s) {', '.join(missing)}; the file has {', '.join(table.column_names[:20])}"
        )
    times = (
        to_seconds(table.column(time_column).combine_chunks(), time_column, str(p)) if time_column else None
    )
    series = None
    if series_column:
        col = table.column(series_column)
        if col.null_count:
            raise DataError(f"{p}: series column '{series_column}' is empty in {col.null_count} row(s)")
        series = np.asarray(col.to_pylist(), dtype=object).astype(str)
    return RowContext(times, series, time_column, series_column)


def time_order(n: int, context: RowContext) -> tuple[np.ndarray, bool]:
    """A stable order of the rows by (series in order of first appearance, time); and whether the
    input was already in that order."""
    keys = []
    if context.times is not None:
        keys.append(context.times)
    if context.series is not None:
        _, first, inverse = np.unique(context.series, return_index=True, return_inverse=True)
        rank = np.argsort(np.argsort(first, kind="stable"), kind="stable")
        keys.append(rank[inverse])
    if not keys:
        return np.arange(n), True
    order = np.lexsort(tuple(keys))  # the last key sorts first: series, then time; stable
    return order, bool((order == np.arange(n)).all())


def usual_step(times: np.ndarray | None, series: np.ndarray | None) -> float | None:
    """The median positive time difference between consecutive rows of a series (sorted input)."""
    if times is None or len(times) < 2:
        return None
    diffs = np.diff(times)
    if series is not None:
        diffs = diffs[series[1:] == series[:-1]]
    diffs = diffs[diffs > 0]
    return float(np.median(diffs)) if len(diffs) else None


def score_rows(scorer: Any, x: np.ndarray, context: RowContext) -> tuple[np.ndarray, np.ndarray, int]:
    """Score every row of ``x`` with a windowed model, as the batch job does: rows ordered by
    (series, time), windows from :class:`~service.windows.WindowBuilder`; returns, in input order,
    ``(score [n] with NaN for warm-up rows, severity level [n] with 0 for them, gaps found)``."""
    spec = scorer.window
    order, _ = time_order(x.shape[0], context)
    times = None if context.times is None else context.times[order]
    series = None if context.series is None else context.series[order]
    built = WindowBuilder(spec, x.shape[1]).add(x[order], series=series, times=times)
    score = np.full(x.shape[0], np.nan, dtype=np.float32)
    level = np.zeros(x.shape[0], dtype=np.int64)
    for start in range(0, len(built.rows), 65536):
        part = scorer.score(built.samples[start : start + 65536])
        rows = order[built.rows[start : start + 65536]]
        score[rows] = part.score
        level[rows] = part.severity_level
    return score, level, built.gaps


def model_context(path: str | Path, spec: WindowSpec, source: str) -> RowContext:
    """The time and series columns a windowed model names, read from a CSV / Parquet file to score;
    an NPZ (no columns) is taken in row order as one series."""
    if Path(path).suffix.lower() == ".npz":
        return RowContext()
    return load_context(path, spec.time_column, spec.series_column)
