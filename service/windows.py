"""Rows to windows, per series and in time order: the one place every consumer builds a model's samples.

A windowed model's sample is the ``W`` consecutive rows of one series that end at row ``t``; its
score belongs to row ``t``. A row with fewer than ``W`` rows behind it in its run (warm-up at the
start, or right after a gap) has no window and so no score. The trainer, the batch job (across
chunks), a ScoreStream (one row per message) and ``aeguard watch`` all call :class:`WindowBuilder`,
so they agree on which rows are scored and on what.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import InvalidInputError, LimitExceededError, ModelLoadError, truncate

#: A time difference above ``max_gap`` usual steps restarts the window, unless the model says otherwise.
DEFAULT_MAX_GAP = 3.0


@dataclass(frozen=True)
class WindowSpec:
    """What a windowed model needs from its rows: read from the artifact's ``window`` section."""

    size: int
    """W: consecutive rows per sample (>= 2)."""
    step: float | None = None
    """The series' usual time step in seconds; ``None`` when rows carry no time (no gap detection)."""
    max_gap: float = DEFAULT_MAX_GAP
    """A time difference above ``max_gap * step`` between consecutive rows is a gap."""
    time_column: str | None = None
    """The column that orders rows, when the data has one."""
    series_column: str | None = None
    """The column naming the series, when the data has several."""

    @classmethod
    def from_section(cls, section: dict[str, Any], source: str = "model") -> WindowSpec | None:
        """The spec of a metadata ``window`` section; ``None`` for a row-wise model (empty section)."""
        if not section:
            return None
        size = section.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 2:
            raise ModelLoadError(f"{source}: window.size must be an integer >= 2, got {size!r}")
        step = section.get("step")
        if step is not None and not (isinstance(step, int | float) and np.isfinite(step) and step > 0):
            raise ModelLoadError(f"{source}: window.step must be a positive number of seconds, got {step!r}")
        max_gap = section.get("max_gap", DEFAULT_MAX_GAP)
        if not (isinstance(max_gap, int | float) and np.isfinite(max_gap) and max_gap > 1):
            raise ModelLoadError(f"{source}: window.max_gap must be a number > 1, got {max_gap!r}")
        return cls(
            size=size,
            step=None if step is None else float(step),
            max_gap=float(max_gap),
            time_column=section.get("time_column"),
            series_column=section.get("series_column"),
        )

    @property
    def gap_s(self) -> float | None:
        """The largest time difference that does not break a run, in seconds."""
        return None if self.step is None else self.max_gap * self.step


def sliding(rows: np.ndarray, size: int) -> np.ndarray:
    """Every window of ``size`` consecutive rows of ``rows`` ``[n, d]``: ``[n - size + 1, size, d]``.

    A read-only view (no copy); rows oldest first inside each window.
    """
    return np.lib.stride_tricks.sliding_window_view(rows, size, axis=0).transpose(0, 2, 1)


@dataclass
class _History:
    """The last ``W - 1`` rows of one series (fewer at its start) and the time of its last row."""

    rows: np.ndarray
    last_time: float | None


@dataclass(frozen=True)
class Windows:
    """The windows built from a batch of rows, and the rows they belong to."""

    samples: np.ndarray
    """``[m, W, d]`` float32, one window per scored row, in input order."""
    rows: np.ndarray
    """``[m]`` int: the index (in the batch given) of the row each window ends at."""
    n_rows: int
    """How many rows were given; the rows not in ``rows`` are warm-up rows (no score)."""
    gaps: int
    """How many gaps restarted a window in this batch."""

    def scored_mask(self) -> np.ndarray:
        """``[n_rows]`` bool: True where a row has a window (and so a score)."""
        mask = np.zeros(self.n_rows, dtype=bool)
        mask[self.rows] = True
        return mask


class WindowBuilder:
    """Builds windows per series, carrying each series' last ``W - 1`` rows from one call to the next.

    Rows of one series must come in time order across calls; series may interleave. ``max_series``
    bounds the state (a ScoreStream's per-stream bound): a new series beyond it is refused with
    :class:`LimitExceededError`, and the least recently seen series is never evicted silently.
    """

    def __init__(self, spec: WindowSpec, n_features: int, *, max_series: int | None = None) -> None:
        self.spec = spec
        self.n_features = n_features
        self.max_series = max_series
        self._series: OrderedDict[Any, _History] = OrderedDict()

    @property
    def series_count(self) -> int:
        return len(self._series)

    def forget(self, key: Any) -> None:
        """Drop one series' history (its next row starts a new run)."""
        self._series.pop(key, None)

    def add(
        self, x: np.ndarray, *, series: np.ndarray | None = None, times: np.ndarray | None = None
    ) -> Windows:
        """Windows for rows ``x`` ``[n, d]``, with optional per-row series keys and times (seconds).

        Raises :class:`InvalidInputError` when a series' rows go back in time (naming the series)
        and :class:`LimitExceededError` when a new series would pass ``max_series``.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = x.shape[0]
        if times is not None:
            times = np.asarray(times, dtype=np.float64)
            if times.shape != (n,) or not np.isfinite(times).all():
                raise InvalidInputError(f"times must be {n} finite values, one per row")
        if series is None:
            groups: list[tuple[Any, np.ndarray]] = [(None, np.arange(n))]
        else:
            groups = _group_rows(np.asarray(series))
        self._check_capacity([key for key, _ in groups])
        parts, owners, gaps = [], [], 0
        for key, idx in groups:
            samples, ends, found = self._add_series(key, x[idx], None if times is None else times[idx])
            parts.append(samples)
            owners.append(idx[ends])
            gaps += found
        return _collect(parts, owners, n, self.spec.size, self.n_features, gaps)

    def _check_capacity(self, keys: list[Any]) -> None:
        if self.max_series is None:
            return
        new = [k for k in keys if k not in self._series]
        if len(self._series) + len(new) > self.max_series:
            raise LimitExceededError(
                f"series {truncate(str(new[0]), 80)!r} would be series number {len(self._series) + 1} "
                f"on this stream; the limit is {self.max_series} (close the stream to release them)"
            )

    def _add_series(
        self, key: Any, x: np.ndarray, times: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Windows of one series' new rows: ``(samples, index of each window's last row, gaps)``."""
        w, n = self.spec.size, len(x)
        history = self._series.get(key)
        starts, gaps = self._run_starts(key, history, times, n)
        empty = np.empty((0, self.n_features), dtype=np.float32)
        carry = history.rows if history is not None and not starts[0] else empty
        edges = [0, *(np.flatnonzero(starts[1:]) + 1).tolist(), n]
        samples, ends, tail = [], [], carry
        for begin, end in itertools.pairwise(edges):
            head = carry if begin == 0 else empty
            run = np.concatenate([head, x[begin:end]]) if len(head) else x[begin:end]
            if len(run) >= w:  # exactly one window (a stream's row after warm-up): no view needed
                samples.append(run[None] if len(run) == w else sliding(run, w))
                ends.append(np.arange(w - 1, len(run)) - len(head) + begin)
            tail = run[max(0, len(run) - (w - 1)) :]
        if n:
            last_time = None if times is None else float(times[-1])
            self._series[key] = _History(np.array(tail, dtype=np.float32), last_time)
            self._series.move_to_end(key)
        if not samples:
            return np.empty((0, w, self.n_features), dtype=np.float32), np.empty(0, dtype=np.int64), gaps
        return np.concatenate(samples), np.concatenate(ends), gaps

    def _run_starts(
        self, key: Any, history: _History | None, times: np.ndarray | None, n: int
    ) -> tuple[np.ndarray, int]:
        """``([n] bool, gaps)``: True where a row starts a new run (a gap before it, or no history)."""
        starts = np.zeros(n, dtype=bool)
        if n == 0:
            return starts, 0
        gaps = 0
        if times is not None:
            previous = np.empty(n)
            previous[0] = np.nan if history is None or history.last_time is None else history.last_time
            previous[1:] = times[:-1]
            diffs = times - previous
            backwards = diffs < 0
            if backwards.any():
                i = int(np.argmax(backwards))
                where = "series" if key is None else f"series {truncate(str(key), 80)!r}"
                raise InvalidInputError(
                    f"{where}: a row at time {times[i]:.6f} is older than the row before it "
                    f"({previous[i]:.6f}); send each series' rows in time order"
                )
            gap_s = self.spec.gap_s
            if gap_s is not None:
                jumps = diffs > gap_s
                gaps = int(jumps.sum())
                starts |= jumps
        starts[0] |= history is None
        return starts, gaps


def _group_rows(series: np.ndarray) -> list[tuple[Any, np.ndarray]]:
    """``(key, row indices in input order)`` per series, series in order of first appearance."""
    keys, first, inverse = np.unique(series, return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(keys)))[:-1]
    groups = np.split(order, bounds)
    return [(_plain(keys[i]), groups[i]) for i in np.argsort(first, kind="stable")]


def _plain(key: Any) -> Any:
    """A numpy scalar as the Python value it holds, so keys compare and print naturally."""
    return key.item() if isinstance(key, np.generic) else key


def _collect(
    parts: list[np.ndarray], owners: list[np.ndarray], n: int, size: int, d: int, gaps: int
) -> Windows:
    """One :class:`Windows` from each series' windows, ordered by the row they end at."""
    if not parts or sum(len(p) for p in parts) == 0:
        return Windows(np.empty((0, size, d), dtype=np.float32), np.empty(0, dtype=np.int64), n, gaps)
    rows = np.concatenate(owners)
    samples = np.concatenate(parts)
    if len(parts) > 1:
        order = np.argsort(rows, kind="stable")
        rows, samples = rows[order], samples[order]
    return Windows(np.ascontiguousarray(samples, dtype=np.float32), rows.astype(np.int64), n, gaps)
