"""One Arrow batch in, one Arrow batch of scores out: the transform every engine (local, remote, Spark) runs.

Keeping it in one place is what makes the engines' outputs identical row for row. It finds the
feature columns by the model's feature names, separates bad rows (missing, non-numeric, NaN or
infinite values) from good ones, scores the good ones with a :data:`ScoreFn`, and assembles the
output columns. It never drops a row: a bad row either fails the job (``fail``) or comes out with
null scores and an ``error`` text (``flag``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from service import artifact
from service.artifact import ModelMetadata
from service.batch.config import BatchConfig
from service.errors import DataError
from service.scorer import ScoreBatch

#: Scores a C-contiguous float32 matrix of good rows; the bool asks for per-feature errors.
ScoreFn = Callable[[np.ndarray, bool], ScoreBatch]

ERROR_COLUMN = "error"
SCORE_COLUMNS = ("score", "normalized_score", "is_anomaly", "severity")


@dataclass(frozen=True)
class BadRow:
    """One row that cannot be scored: its position in the batch and why, per offending column."""

    index: int
    problems: tuple[tuple[str, str], ...]  # (column, what is wrong with its value)

    @property
    def reason(self) -> str:
        return "; ".join(f"column '{col}' {what}" for col, what in self.problems)


@dataclass(frozen=True)
class OutputSpec:
    """Which columns an output batch has, derived once from the model, the input schema and the options."""

    feature_names: tuple[str, ...]
    severity_names: tuple[str, ...]
    carried: tuple[str, ...]  # input columns copied through (id column first)
    top_k: int
    flag_bad_rows: bool
    id_column: str | None = None

    @classmethod
    def for_config(
        cls, metadata: ModelMetadata, input_names: Sequence[str], config: BatchConfig
    ) -> OutputSpec:
        """:meth:`build` with the job's output options (every engine derives its spec this way)."""
        return cls.build(
            metadata,
            input_names,
            id_column=config.id_column,
            keep_columns=config.keep_columns,
            top_k=config.top_k,
            flag_bad_rows=config.on_bad_rows == "flag",
        )

    @classmethod
    def build(
        cls,
        metadata: ModelMetadata,
        input_names: Sequence[str],
        *,
        id_column: str | None,
        keep_columns: Sequence[str],
        top_k: int,
        flag_bad_rows: bool,
    ) -> OutputSpec:
        """Check the input has every column needed; raise :class:`DataError` listing what is missing."""
        names = set(input_names)
        missing = [f for f in metadata.feature_names if f not in names]
        if missing:
            raise DataError(
                f"the input lacks {len(missing)} of the model's {metadata.n_features} feature columns: "
                f"{', '.join(missing)} (model '{metadata.name}' expects {', '.join(metadata.feature_names)})"
            )
        carried = list(dict.fromkeys([c for c in (id_column, *keep_columns) if c]))
        absent = [c for c in carried if c not in names]
        if absent:
            raise DataError(
                f"--id-column/--keep-columns name {', '.join(absent)}, not in the input "
                f"(columns: {', '.join(input_names)})"
            )
        reserved = (
            set(SCORE_COLUMNS)
            | {ERROR_COLUMN}
            | {n for i in range(1, top_k + 1) for n in (f"top_{i}_feature", f"top_{i}_error")}
        )
        clash = [c for c in carried if c in reserved]
        if clash:
            raise DataError(f"carried column(s) {', '.join(clash)} would clash with an output column name")
        if top_k < 0:
            raise DataError("--top-k must be >= 0")
        return cls(
            feature_names=tuple(metadata.feature_names),
            severity_names=(artifact.SEVERITY_NONE, *(t.name for t in metadata.thresholds)),
            carried=tuple(carried),
            top_k=min(top_k, metadata.n_features),
            flag_bad_rows=flag_bad_rows,
            id_column=id_column,
        )

    @property
    def input_columns(self) -> list[str]:
        """The input columns an engine must read (carried ones first, then features)."""
        return list(dict.fromkeys([*self.carried, *self.feature_names]))

    def schema(self, input_schema: pa.Schema) -> pa.Schema:
        """The output schema, the same for every batch and every engine."""
        fields = [input_schema.field(c) for c in self.carried]
        fields += [
            pa.field("score", pa.float32()),
            pa.field("normalized_score", pa.float32()),
            pa.field("is_anomaly", pa.bool_()),
            pa.field("severity", pa.string()),
        ]
        for i in range(1, self.top_k + 1):
            fields += [pa.field(f"top_{i}_feature", pa.string()), pa.field(f"top_{i}_error", pa.float32())]
        if self.flag_bad_rows:
            fields.append(pa.field(ERROR_COLUMN, pa.string()))
        return pa.schema(fields)


def _describe(value: object) -> str:
    if value is None:
        return "is missing"
    if isinstance(value, float):
        if math.isnan(value):
            return "is NaN"
        if math.isinf(value):
            return f"is infinite ({value})"
        return f"is {value!r}, beyond float32's range"
    return f"is not a number ({str(value)[:40]!r})"


def _column_values(column: pa.Array, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A column as float64 values (NaN where unusable) and, for text columns, a mask of non-numeric cells."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.dictionary_decode()
        kind = column.type
    if (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_decimal(kind)
    ):
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False), None
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), None
        except pa.ArrowInvalid:
            pass
        values = np.full(len(column), np.nan)
        bad_text = np.zeros(len(column), dtype=bool)
        for i, text in enumerate(column.to_pylist()):
            if text is None:
                continue
            try:
                values[i] = float(text)
            except ValueError:
                bad_text[i] = True
        return values, bad_text
    raise DataError(f"feature column '{name}' has type {kind}; it must be numeric")


@dataclass(frozen=True)
class Split:
    """An input batch separated into scorable rows and bad rows."""

    batch: pa.RecordBatch
    x: np.ndarray  # [g, d] float32, C-contiguous: the good rows' features
    good: np.ndarray  # [n] bool
    bad_rows: list[BadRow]


#: Rows per block when gathering columns into a row-major matrix: the block stays in cache.
_GATHER_ROWS = 2048


def _row_major(columns: list[np.ndarray], n: int) -> np.ndarray:
    """Columns -> a C-contiguous float32 ``[n, d]`` matrix (float64 values are narrowed here).

    Copying block by block of rows keeps the strided writes in cache: 4x faster than one
    column at a time over the whole chunk (8 ms vs 36 ms for 65536 x 32).
    """
    x = np.empty((n, len(columns)), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, _GATHER_ROWS):
            block = x[start : start + _GATHER_ROWS]
            for j, values in enumerate(columns):
                block[:, j] = values[start : start + _GATHER_ROWS]
    return x


def split_rows(batch: pa.RecordBatch, spec: OutputSpec) -> Split:
    """Gather the feature columns into a row-major float32 matrix and find the rows that cannot be scored."""
    n = batch.num_rows
    text_masks: dict[int, np.ndarray] = {}
    nulls: dict[int, np.ndarray] = {}
    columns = []
    for j, name in enumerate(spec.feature_names):
        column = batch.column(name)
        if column.null_count == 0 and pa.types.is_floating(column.type):
            columns.append(column.to_numpy())  # zero-copy view
            continue
        values, bad_text = _column_values(column, name)
        columns.append(values)
        if column.null_count:
            nulls[j] = column.is_null().to_numpy(zero_copy_only=False)
        if bad_text is not None:
            text_masks[j] = bad_text
    x = _row_major(columns, n)
    finite = np.isfinite(x)
    if finite.all():  # the common case; a per-row reduction costs several times more
        return Split(batch, x, np.ones(n, dtype=bool), [])
    bad = ~finite.all(axis=1)
    if not bad.any():
        return Split(batch, x, ~bad, [])
    bad_rows = []
    for i in np.flatnonzero(bad):
        problems = []
        for j in (int(k) for k in np.flatnonzero(~finite[i])):
            name = spec.feature_names[j]
            if j in nulls and nulls[j][i]:
                value: object = None
            elif j in text_masks and text_masks[j][i]:
                value = batch.column(name)[int(i)].as_py()
            else:  # NaN, infinite, or too large for float32
                value = float(batch.column(name)[int(i)].as_py())
            problems.append((name, _describe(value)))
        bad_rows.append(BadRow(int(i), tuple(problems)))
    good = ~bad
    return Split(batch, np.ascontiguousarray(x[good]), good, bad_rows)


def _scatter(values: np.ndarray, good: np.ndarray, all_good: bool) -> pa.Array:
    if all_good:
        return pa.array(values)
    full = np.zeros(len(good), dtype=values.dtype)
    full[good] = values
    return pa.array(full, mask=~good)


def _names(dictionary: pa.Array, index: np.ndarray, good: np.ndarray, all_good: bool) -> pa.Array:
    full = np.zeros(len(good), dtype=np.int64)
    full[good] = index
    indices = pa.array(full) if all_good else pa.array(full, mask=~good)
    return pc.take(dictionary, indices)


def score_batch(
    batch: pa.RecordBatch | Split,
    spec: OutputSpec,
    score_fn: ScoreFn,
    output_schema: pa.Schema,
) -> tuple[pa.RecordBatch, list[BadRow]]:
    """Score one input batch (or its :func:`split_rows`); return the output batch and the bad rows.

    With ``spec.flag_bad_rows`` false the caller must fail on any bad row; the returned batch
    is then empty and must not be written.
    """
    split = batch if isinstance(batch, Split) else split_rows(batch, spec)
    batch, x, good, bad_rows = split.batch, split.x, split.good, split.bad_rows
    all_good = not bad_rows
    if bad_rows and not spec.flag_bad_rows:
        return pa.RecordBatch.from_pylist([], schema=output_schema), bad_rows
    if len(x):
        scored = score_fn(x, spec.top_k > 0)
    else:  # every row is bad: nothing to score
        empty = np.zeros(0, dtype=np.float32)
        scored = ScoreBatch(empty, empty, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), None)
    columns = [batch.column(c) for c in spec.carried]
    columns += [
        _scatter(np.asarray(scored.score, dtype=np.float32), good, all_good),
        _scatter(np.asarray(scored.normalized_score, dtype=np.float32), good, all_good),
        _scatter(np.asarray(scored.is_anomaly, dtype=bool), good, all_good),
        _names(pa.array(spec.severity_names), np.asarray(scored.severity_level), good, all_good),
    ]
    if spec.top_k:
        columns += _top_columns(scored.feature_errors, spec, good, all_good)
    if spec.flag_bad_rows:
        errors = np.full(batch.num_rows, None, dtype=object)
        for row in bad_rows:
            errors[row.index] = row.reason
        columns.append(pa.array(errors, type=pa.string()))
    return pa.RecordBatch.from_arrays(columns, schema=output_schema), bad_rows


def _top_columns(
    feature_errors: np.ndarray | None, spec: OutputSpec, good: np.ndarray, all_good: bool
) -> list:
    """``top_i_feature`` / ``top_i_error`` columns, ordered and tie-broken like ``scorer.top_features``."""
    k = spec.top_k
    names = pa.array(spec.feature_names)
    if feature_errors is None or len(feature_errors) == 0:
        order = np.zeros((0, k), dtype=np.int64)
        errors = np.zeros((0, k), dtype=np.float32)
    else:
        fe = np.asarray(feature_errors, dtype=np.float32)
        order = np.argsort(-fe, axis=1, kind="stable")[:, :k]
        errors = np.take_along_axis(fe, order, axis=1)
    columns = []
    for i in range(k):
        columns.append(_names(names, order[:, i], good, all_good))
        columns.append(_scatter(np.ascontiguousarray(errors[:, i]), good, all_good))
    return columns
