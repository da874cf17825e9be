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
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from service.metrics.watch import GroupKey
from service.watch.prometheus import Series, SeriesSet
from service.windows import WindowBuilder, WindowSpec

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

    def to_arrow(self) -> pa.Table:
        """Group labels (text), ``timestamp`` (unix seconds), then the features."""
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
            pq.write_table(self.to_arrow(), out)
        else:
            pacsv.write_csv(self.to_arrow(), out)
        return out


def group_key(labels: Mapping[str, str], group_by: Sequence[str]) -> GroupKey:
    return tuple([labels.get(name, "") for name in group_by])


def group_keys(labels: list[dict[str, str]], group_by: Sequence[str]) -> list[GroupKey]:
    """:func:`group_key` of many series at once (a cycle computes thousands)."""
    if len(group_by) == 1:
        (name,) = group_by
        return [(lab.get(name, ""),) for lab in labels]
    return [tuple([lab.get(name, "") for name in group_by]) for lab in labels]


def align(results: Mapping[str, SeriesSet | list[Series]], group_by: Sequence[str]) -> Table:
    """Join the features' series on (group, timestamp); drop and count incomplete rows.

    ``results`` maps each feature name (in order) to the series its query returned. Vectorised over
    all groups at once: a cycle over thousands of groups spends its time in numpy, not in Python.
    """
    features = list(results)
    sets = [r if isinstance(r, SeriesSet) else SeriesSet.from_series(r) for r in results.values()]
    keys = [group_keys(s.labels, group_by) for s in sets]
    ambiguous = {k for ks in keys for k, n in Counter(ks).items() if n > 1}
    all_keys = sorted({k for ks in keys for k in ks})
    ids = {k: i for i, k in enumerate(all_keys)}
    # Per feature: each point's group id and time (integer ms); one row per (group, time).
    groups_of = [
        np.repeat(np.array([ids[k] for k in ks], dtype=np.int64), s.sizes)
        for ks, s in zip(keys, sets, strict=True)
    ]
    stamps_of = [np.rint(s.timestamps * 1000).astype(np.int64) for s in sets]
    times = np.unique(np.concatenate(stamps_of)) if sets else np.zeros(0, np.int64)
    width = max(1, times.size)
    row_keys = [g * width + np.searchsorted(times, t) for g, t in zip(groups_of, stamps_of, strict=True)]
    rows = np.unique(np.concatenate(row_keys)) if row_keys else np.zeros(0, np.int64)
    x = np.full((rows.size, len(features)), np.nan)
    have = np.zeros((rows.size, len(features)), dtype=bool)
    for j, (row_key, s) in enumerate(zip(row_keys, sets, strict=True)):
        pos = np.searchsorted(rows, row_key)
        x[pos, j] = s.values
        have[pos, j] = True
    row_group = rows // width
    bad = np.isin(row_group, [ids[k] for k in ambiguous])
    complete = np.all(have, axis=1) & ~bad
    with np.errstate(over="ignore"):  # a value past float32's range is non-finite to the model: drop it here
        x32 = x.astype(np.float32)
    keep = complete & np.all(np.isfinite(x32), axis=1)
    skipped: Counter[str] = Counter()
    for reason, mask in (
        (DUPLICATE_SERIES, bad),
        (MISSING_FEATURE, ~np.all(have, axis=1) & ~bad),
        (NON_FINITE, complete & ~keep),
    ):
        if mask.any():
            skipped[reason] = int(mask.sum())
    kept_ids, group_index = np.unique(row_group[keep], return_inverse=True)
    return Table(
        group_by=tuple(group_by),
        feature_names=features,
        groups=[all_keys[i] for i in kept_ids.tolist()],
        group_index=group_index.astype(np.int64).reshape(-1),
        timestamps=times[rows[keep] % width] / 1000.0,
        x=x32[keep],
        skipped=skipped,
        dropped_groups=_dropped_groups(row_group, keep, bad, complete, len(all_keys)),
    )


def _dropped_groups(
    row_group: np.ndarray, keep: np.ndarray, bad: np.ndarray, complete: np.ndarray, n_groups: int
) -> Counter[str]:
    """Groups left without a row, by the reason their last row was dropped."""
    dropped: Counter[str] = Counter()
    if row_group.size == 0:
        return dropped
    kept_per_group = np.bincount(row_group[keep], minlength=n_groups)
    last = np.flatnonzero(np.r_[row_group[1:] != row_group[:-1], True])  # each group's last row
    for r in last[kept_per_group[row_group[last]] == 0].tolist():
        reason = DUPLICATE_SERIES if bad[r] else MISSING_FEATURE if not complete[r] else NON_FINITE
        dropped[reason] += 1
    return dropped


def last_samples(
    table: Table, window: WindowSpec | None, step_s: float, at: float, groups: Sequence[int] | None = None
) -> tuple[list[int], np.ndarray, Counter[str]]:
    """Per group (all, or ``groups``), the sample its row at time ``at`` makes: the groups that have one,
    their samples ``[g, W, d]`` (``W = 1`` for a row-wise model), and how many groups had none, by reason.

    A windowed model's windows come from :class:`service.windows.WindowBuilder`, the one place every
    consumer builds them: a gap longer than the model's ``max_gap`` steps restarts a window, so a
    group whose last run is shorter than W has no sample (``window_incomplete``).
    """
    skipped: Counter[str] = Counter()
    wanted = np.arange(len(table.groups)) if groups is None else np.asarray(groups, dtype=np.int64)
    ends = np.searchsorted(table.group_index, wanted, side="right")  # one past each group's last row
    present = ends > np.searchsorted(table.group_index, wanted, side="left")
    current = present.copy()
    current[present] = np.abs(table.timestamps[ends[present] - 1] - at) <= step_s / 2
    if (~current).any():
        skipped[MISSING_FEATURE] = int((~current).sum())  # its newest complete row is not the one asked for
    candidates: list[int] = wanted[current].tolist()
    last_rows: list[int] = (ends[current] - 1).tolist()
    if window is None:
        return candidates, table.x[last_rows][:, None, :], skipped
    spans = [np.arange(table.rows_of(g).start, table.rows_of(g).stop) for g in candidates]
    index = np.concatenate(spans).astype(np.int64) if spans else np.zeros(0, np.int64)
    built = WindowBuilder(window, len(table.feature_names)).add(
        table.x[index], series=table.group_index[index], times=table.timestamps[index]
    )
    window_of = {int(index[r]): i for i, r in enumerate(built.rows.tolist())}  # table row -> window
    chosen, picked = [], []
    for g, last in zip(candidates, last_rows, strict=True):
        if last in window_of:
            chosen.append(g)
            picked.append(window_of[last])
        else:
            skipped[WINDOW_INCOMPLETE] += 1
    return chosen, built.samples[picked], skipped
