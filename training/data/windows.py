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
from service.windows import DEFAULT_MAX_GAP, WindowBuilder, WindowSpec
from training.data.samples import RowContext, Samples
from training.data.tables import _read_table
from training.data.window_splits import MIN_WINDOWS

#: ``--window auto`` keeps W within these bounds (see :func:`choose_window`).
AUTO_MIN_WINDOW = 8
AUTO_MAX_WINDOW = 32
#: ``--window auto``: W is the lag at which the values' autocorrelation first falls below this.
AUTO_ACF_LEVEL = 0.5
#: The largest W a user may ask for.
MAX_WINDOW = 512


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
    if context.time is not None:
        keys.append(context.time)
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
    times = None if context.time is None else context.time[order]
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


@dataclass(frozen=True)
class WindowOptions:
    """``--window``, ``--time-column``, ``--series-column`` and the gap rule."""

    size: int | str = "auto"
    max_gap: float = DEFAULT_MAX_GAP


def parse_window(text: str) -> int | str:
    """``--window``: a number of steps >= 2, or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        w = int(text)
    except ValueError:
        raise InvalidInputError(f"--window must be a number of steps >= 2 or 'auto', got {text!r}") from None
    if not 2 <= w <= MAX_WINDOW:
        raise InvalidInputError(f"--window must be between 2 and {MAX_WINDOW} steps, got {w}")
    return w


def choose_window(x: np.ndarray, run_starts: np.ndarray) -> tuple[int, dict[str, Any]]:
    """``--window auto``: per feature, the first lag at which the autocorrelation of its values
    (within the longest run) falls below :data:`AUTO_ACF_LEVEL`; W is the median over features,
    kept within [:data:`AUTO_MIN_WINDOW`, :data:`AUTO_MAX_WINDOW`] and below half the run."""
    bounds = [*run_starts.tolist(), len(x)]
    lengths = np.diff(bounds)
    i = int(np.argmax(lengths))
    run = x[bounds[i] : bounds[i + 1]].astype(np.float64)
    top = max(2, min(AUTO_MAX_WINDOW, len(run) // 2))
    lags = []
    for j in range(run.shape[1]):
        v = run[:, j] - run[:, j].mean()
        denom = float((v * v).sum())
        if denom <= 0:
            continue
        lag = top
        for k in range(1, top + 1):
            if float((v[:-k] * v[k:]).sum()) / denom < AUTO_ACF_LEVEL:
                lag = k
                break
        lags.append(lag)
    w = int(np.clip(round(float(np.median(lags))) if lags else AUTO_MIN_WINDOW, AUTO_MIN_WINDOW, top))
    w = max(2, min(w, top))
    info = {
        "rule": f"median over features of the first lag where the autocorrelation < {AUTO_ACF_LEVEL}, "
        f"within [{AUTO_MIN_WINDOW}, {AUTO_MAX_WINDOW}] and at most half the longest run",
        "lags": lags,
        "run_rows": int(lengths[i]),
    }
    return w, info


def window_rows(x: np.ndarray, labels: np.ndarray | None, context: RowContext) -> WindowedRows:
    """Sort the rows by (series, time), choose W when ``context.window`` is ``auto``, and build every
    window (a jump of more than ``context.max_gap`` usual steps restarts it)."""
    n = x.shape[0]
    order, was_sorted = time_order(n, context)
    xs = np.ascontiguousarray(x[order], dtype=np.float32)
    ys = None if labels is None else labels[order]
    times = None if context.time is None else context.time[order]
    series = None if context.series is None else context.series[order]
    if times is not None and series is None and len(times) > 1 and not (np.diff(times) > 0).all():
        dup = int((np.diff(times) == 0).sum())
        if dup:
            raise DataError(
                f"{dup} row(s) share a time with the row before; give --series-column if the file "
                "holds several series, or remove the duplicates"
            )
    step = usual_step(times, series)
    probe = WindowSpec(size=2, step=step, max_gap=context.max_gap)
    starts = _run_starts(n, times, series, probe)
    info: dict[str, Any] = {}
    if context.window == "auto":
        size, info = choose_window(xs, np.flatnonzero(starts))
    else:
        size = int(context.window)
    spec = WindowSpec(size, step, context.max_gap, context.time_column, context.series_column)
    built = WindowBuilder(spec, xs.shape[1]).add(xs, series=series, times=times)
    if len(built.rows) < 2 * MIN_WINDOWS:
        raise DataError(
            f"windows of {size} rows leave {len(built.rows)} samples from {n} rows "
            f"({built.gaps} gap(s)); give more rows or a smaller --window"
        )
    n_series = 1 if series is None else len(np.unique(series))
    return WindowedRows(
        xs, ys, order, spec, built.samples, built.rows, built.gaps, n_series, was_sorted, info
    )


def _run_starts(n: int, times: np.ndarray | None, series: np.ndarray | None, spec: WindowSpec) -> np.ndarray:
    """``[n]`` bool: True where a run of consecutive rows begins (a new series, or after a gap)."""
    starts = np.zeros(n, dtype=bool)
    starts[0] = True
    if series is not None:
        starts[1:] |= series[1:] != series[:-1]
    if times is not None and spec.gap_s is not None:
        starts[1:] |= np.diff(times) > spec.gap_s
    return starts


def window_samples(x: np.ndarray, labels: np.ndarray | None, context: RowContext) -> Samples:
    """The windowed kind's ``samples`` hook: one sample per window ``[m, W, d]``, labelled by its
    last row, whose input row its score belongs to; the metadata's ``window`` section."""
    rows = window_rows(x, labels, context)
    spec = rows.spec
    window: dict[str, Any] = {
        "size": spec.size,
        "time_column": spec.time_column,
        "series_column": spec.series_column,
        "step": spec.step,
        "max_gap": spec.max_gap,
        "chosen_by": "auto" if rows.info else "user",
        "gaps": rows.gaps,
        "series": rows.n_series,
        "rows_sorted": not rows.was_sorted,
        **({"auto": rows.info} if rows.info else {}),
    }
    if spec.step is None:
        del window["step"]
    return Samples(rows.samples, rows.window_labels(), rows.order[rows.ends], window, detail=rows)
