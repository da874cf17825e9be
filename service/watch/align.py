"""Query results -> one table: one row per timestamp per group, one column per query (feature).

A group is the values of the ``group_by`` labels (for example one ``instance``). A row is kept only
when every feature has a finite value at that timestamp for that group; every other row is dropped
and counted under a reason, never filled. Rows come out ordered by group, then time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.watch.prometheus import Series

GroupKey = tuple[str, ...]

#: Reasons a row is skipped (the values of the ``reason`` label).
MISSING_FEATURE = "missing_feature"  # some query has no point for this group at this time
NON_FINITE = "non_finite"  # a point is NaN or +-Inf
DUPLICATE_SERIES = "duplicate_series"  # a query gives several series for one group: aggregate it
WINDOW_INCOMPLETE = "window_incomplete"  # fewer than W consecutive steps behind the last row
OVER_LIMIT = "over_max_groups"
MODEL_ERROR = "model_error"
SKIP_REASONS = (MISSING_FEATURE, NON_FINITE, DUPLICATE_SERIES, WINDOW_INCOMPLETE, OVER_LIMIT, MODEL_ERROR)


@dataclass
class Table:
    """Aligned rows: ``x[i]`` is group ``groups[group_index[i]]`` at ``timestamps[i]``."""

    group_by: tuple[str, ...]
    feature_names: list[str]
    groups: list[GroupKey]
    group_index: np.ndarray  # int64 [n]
    timestamps: np.ndarray  # float64 [n], unix seconds
    x: np.ndarray  # float32 [n, d]
    skipped: Counter[str] = field(default_factory=Counter)
    #: Groups left with no row at all, by the reason of their last row.
    dropped_groups: Counter[str] = field(default_factory=Counter)

    @property
    def n_rows(self) -> int:
        return int(self.x.shape[0])

    def rows_of(self, group: int) -> slice:
        """The rows of one group (contiguous, oldest first)."""
        lo, hi = np.searchsorted(self.group_index, [group, group + 1])
        return slice(int(lo), int(hi))

    def to_arrow(self):  # -> pyarrow.Table
        """Group labels (text), ``timestamp`` (unix seconds), then the features."""
        import pyarrow as pa

        columns: dict[str, pa.Array] = {}
        for j, label in enumerate(self.group_by):
            columns[label] = pa.array([self.groups[g][j] for g in self.group_index.tolist()], pa.string())
        columns["timestamp"] = pa.array(self.timestamps, pa.float64())
        for j, name in enumerate(self.feature_names):
            columns[name] = pa.array(self.x[:, j].astype(np.float64))
        return pa.table(columns)

    def write(self, path: str | Path) -> Path:
        """Write as CSV (``.csv``) or Parquet (``.parquet``/``.pq``)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            pq.write_table(self.to_arrow(), out)
        else:
            import pyarrow.csv as pacsv

            pacsv.write_csv(self.to_arrow(), out)
        return out


def group_key(labels: Mapping[str, str], group_by: Sequence[str]) -> GroupKey:
    return tuple(labels.get(name, "") for name in group_by)


def align(results: Mapping[str, list[Series]], group_by: Sequence[str]) -> Table:
    """Join the features' series on (group, timestamp); drop and count incomplete rows.

    ``results`` maps each feature name (in order) to the series its query returned.
    """
    features = list(results)
    skipped: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    per_feature: list[dict[GroupKey, Series]] = []
    ambiguous: set[GroupKey] = set()
    for name in features:
        by_group: dict[GroupKey, Series] = {}
        for s in results[name]:
            key = group_key(s.labels, group_by)
            if key in by_group:
                ambiguous.add(key)
            by_group[key] = s
        per_feature.append(by_group)
    all_groups = sorted(set().union(*per_feature)) if per_feature else []
    groups: list[GroupKey] = []
    index_parts, ts_parts, x_parts = [], [], []
    for key in all_groups:
        present = [f.get(key) for f in per_feature]
        stamps = np.unique(np.concatenate([s.timestamps for s in present if s is not None]))
        if key in ambiguous:
            skipped[DUPLICATE_SERIES] += stamps.size
            dropped[DUPLICATE_SERIES] += 1
            continue
        if any(s is None for s in present):
            skipped[MISSING_FEATURE] += stamps.size
            dropped[MISSING_FEATURE] += 1
            continue
        rows = _join(present, stamps, skipped)  # type: ignore[arg-type]
        if isinstance(rows, str):
            dropped[rows] += 1
            continue
        kept_ts, x = rows
        index_parts.append(np.full(kept_ts.size, len(groups), dtype=np.int64))
        ts_parts.append(kept_ts)
        x_parts.append(x)
        groups.append(key)
    d = len(features)
    return Table(
        group_by=tuple(group_by),
        feature_names=features,
        groups=groups,
        group_index=np.concatenate(index_parts) if index_parts else np.zeros(0, dtype=np.int64),
        timestamps=np.concatenate(ts_parts) if ts_parts else np.zeros(0),
        x=np.vstack(x_parts).astype(np.float32) if x_parts else np.zeros((0, d), dtype=np.float32),
        skipped=skipped,
        dropped_groups=dropped,
    )


def _join(
    present: list[Series], stamps: np.ndarray, skipped: Counter[str]
) -> tuple[np.ndarray, np.ndarray] | str:
    """One group's features on the union of their timestamps; rows lacking a value are dropped (when
    none is left: the reason its last row was dropped)."""
    n, d = stamps.size, len(present)
    x = np.full((n, d), np.nan)
    have = np.zeros((n, d), dtype=bool)
    for j, s in enumerate(present):
        pos = np.searchsorted(stamps, s.timestamps)
        x[pos, j] = s.values
        have[pos, j] = True
    complete = np.all(have, axis=1)
    finite: np.ndarray = np.isfinite(x).all(axis=1)
    skipped[MISSING_FEATURE] += int((~complete).sum())
    skipped[NON_FINITE] += int((complete & ~finite).sum())
    keep = complete & finite
    if not keep.any():
        return MISSING_FEATURE if not bool(complete[-1]) else NON_FINITE
    return stamps[keep], x[keep]


def last_windows(
    table: Table, size: int, step_s: float, at: float, groups: Sequence[int] | None = None
) -> tuple[list[int], np.ndarray, Counter[str]]:
    """Per group (all, or ``groups``), the ``size`` rows ending at time ``at`` if they are consecutive
    steps: the groups that have one and their windows ``[g, size, d]`` (oldest row first), and how
    many groups had none, by reason. ``size == 1``: the row at ``at``."""
    skipped: Counter[str] = Counter()
    chosen: list[int] = []
    windows = []
    tolerance = step_s / 2
    for g in range(len(table.groups)) if groups is None else groups:
        rows = table.rows_of(g)
        ts = table.timestamps[rows]
        if ts.size == 0 or abs(ts[-1] - at) > tolerance:
            skipped[MISSING_FEATURE] += 1  # its last complete row is not the one asked for
            continue
        if ts.size < size or (size > 1 and np.any(np.abs(np.diff(ts[-size:]) - step_s) > tolerance)):
            skipped[WINDOW_INCOMPLETE] += 1
            continue
        chosen.append(g)
        windows.append(table.x[rows][-size:])
    d = len(table.feature_names)
    return chosen, (np.stack(windows) if windows else np.zeros((0, size, d), dtype=np.float32)), skipped
