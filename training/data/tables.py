"""Data loading and checks: CSV / Parquet / NPZ into a float32 matrix, feature names and optional labels.

Every refusal is a :class:`service.errors.DataError` whose message names the column(s) and row
counts involved, so a user sees one line instead of a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.errors import DataError

log = logging.getLogger(__name__)

#: File suffixes read as CSV, Parquet and NPZ.
CSV_SUFFIXES = (".csv", ".txt", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")
NPZ_SUFFIXES = (".npz",)
#: Label of a row whose class is unknown (an empty label cell; only with ``allow_unlabelled``).
UNLABELLED = -1


@dataclass(frozen=True)
class Dataset:
    """A loaded data set.

    Attributes
    ----------
    x : numpy.ndarray
        float32 ``[n, d]``, all finite.
    feature_names : list of str
        Column names in order.
    labels : numpy.ndarray or None
        int8 ``[n]``: 0 = normal, 1 = anomaly (and :data:`UNLABELLED` for an empty label, when
        loaded with ``allow_unlabelled``).
    source : str
        The file it came from.
    """

    x: np.ndarray
    feature_names: list[str]
    labels: np.ndarray | None
    source: str

    @property
    def n_rows(self) -> int:
        return int(self.x.shape[0])


def _names(cols: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(f"'{c}'" for c in cols[:limit])
    return shown + (f" and {len(cols) - limit} more" if len(cols) > limit else "")


def check_labels(
    labels: np.ndarray, n_rows: int, what: str = "labels", *, allow_unlabelled: bool = False
) -> np.ndarray:
    """Return labels as int8 0/1, or raise naming the bad values and how many rows carry them.

    With ``allow_unlabelled``, NaN (an empty cell) and :data:`UNLABELLED` mean "unknown" and come
    back as :data:`UNLABELLED`; without it, they are refused with a hint at ``--semi-supervised``.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n_rows:
        raise DataError(f"{what} have shape {y.shape}, expected one label per row ({n_rows} rows)")
    if y.dtype.kind not in "biuf":
        expected = "0 (normal) / 1 (anomaly)" + (" / empty (unknown)" if allow_unlabelled else "")
        raise DataError(f"{what} must be numbers {expected}, got dtype {y.dtype}")
    yf = y.astype(np.float64)
    unknown = np.isnan(yf) | (yf == UNLABELLED) if allow_unlabelled else np.isnan(yf)
    if unknown.any() and not allow_unlabelled:
        raise DataError(
            f"{what} is empty in {int(unknown.sum())} of {n_rows} row(s); give --semi-supervised to "
            "train with partial labels (1 = anomaly, 0 = normal, empty = unknown)"
        )
    bad = ~np.isin(yf, (0.0, 1.0)) & ~unknown
    if bad.any():
        examples = sorted({f"{v:g}" for v in yf[bad][:20]})[:5]
        allowed = (
            "0 (normal), 1 (anomaly) or empty (unknown)" if allow_unlabelled else "0 (normal) or 1 (anomaly)"
        )
        raise DataError(
            f"{what} must be {allowed}: {int(bad.sum())} of {n_rows} row(s) hold "
            f"other values (e.g. {', '.join(examples)})"
        )
    return np.where(unknown, UNLABELLED, yf).astype(np.int8)


def check_matrix(
    x: np.ndarray,
    feature_names: Sequence[str],
    labels: np.ndarray | None = None,
    *,
    allow_unlabelled: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Check a feature matrix; return it as C-contiguous float32 (and labels as int8).

    Parameters
    ----------
    x : numpy.ndarray
        ``[n, d]`` numbers.
    feature_names : sequence of str
        ``d`` unique, non-empty names.
    labels : numpy.ndarray, optional
        ``[n]`` of 0 / 1 (and NaN / :data:`UNLABELLED` for unknown, with ``allow_unlabelled``).
    allow_unlabelled : bool
        Accept unknown labels (see :func:`check_labels`).

    Raises
    ------
    DataError
        Naming the column(s) and row count of the first problem found.
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise DataError(f"the feature matrix must be 2-D [rows, features], got shape {arr.shape}")
    n, d = arr.shape
    names = list(feature_names)
    if len(names) != d:
        raise DataError(f"{d} feature column(s) but {len(names)} feature name(s)")
    if d == 0:
        raise DataError(f"no feature columns left ({n} row(s)); check --feature-columns / --exclude-columns")
    if any(not isinstance(c, str) or not c for c in names):
        raise DataError("feature names must be non-empty strings")
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise DataError(f"duplicate feature column name(s): {_names(dupes)}")
    if n == 0:
        raise DataError(f"the data has no rows (columns: {_names(names)})")
    if n == 1:
        raise DataError(f"the data has a single row ({d} column(s)); training needs many rows")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"the feature matrix must be numeric, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):
        x32 = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(x32)
    if not finite.all():
        bad_cols = np.flatnonzero(~finite.all(axis=0))
        parts = []
        for j in bad_cols[:8]:
            col = arr[:, j].astype(np.float64)
            n_nan = int(np.isnan(col).sum())
            n_inf = int((~np.isfinite(x32[:, j])).sum()) - n_nan
            kinds = [f"{n_nan} NaN/missing" if n_nan else "", f"{n_inf} Inf/overflow" if n_inf else ""]
            parts.append(f"'{names[j]}' ({', '.join(k for k in kinds if k)})")
        more = f" and {len(bad_cols) - 8} more column(s)" if len(bad_cols) > 8 else ""
        rows = int((~finite).any(axis=1).sum())
        raise DataError(
            f"non-finite values in {len(bad_cols)} column(s): {'; '.join(parts)}{more}; {rows} of {n} row(s) "
            "affected. Clean or drop those rows (`aeguard train` can also leave a column out with "
            "--exclude-columns)"
        )
    y = check_labels(labels, n, allow_unlabelled=allow_unlabelled) if labels is not None else None
    return x32, y


def _split_list(text: str | Sequence[str] | None) -> list[str] | None:
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    return [c.strip() for c in items if c.strip()]


def _read_table(path: Path):  # -> pyarrow.Table
    import pyarrow as pa

    suffix = path.suffix.lower()
    try:
        if suffix in PARQUET_SUFFIXES:
            import pyarrow.parquet as pq

            return pq.read_table(path)
        import pyarrow.csv as pacsv

        parse = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
        return pacsv.read_csv(path, parse_options=parse)
    except pa.ArrowInvalid as exc:
        text = str(exc).splitlines()[0]
        if "Empty CSV file" in text or path.stat().st_size == 0:
            raise DataError(f"{path}: the file is empty (0 rows, no header)") from exc
        raise DataError(
            f"{path}: cannot be read as {'Parquet' if suffix in PARQUET_SUFFIXES else 'CSV'}: {text}"
        ) from exc


def _select_columns(
    columns: list[str],
    label_column: str | None,
    feature_columns: list[str] | None,
    exclude_columns: list[str] | None,
    source: str,
) -> list[str]:
    wanted = [*(feature_columns or []), *(exclude_columns or []), *([label_column] if label_column else [])]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DataError(f"{source}: no column(s) {_names(missing)}; the file has {_names(columns, 20)}")
    if feature_columns:
        chosen = [c for c in feature_columns if c not in (exclude_columns or [])]
        if label_column in chosen:
            raise DataError(f"{source}: the label column '{label_column}' cannot also be a feature")
    else:
        skip = {*(exclude_columns or []), *([label_column] if label_column else [])}
        chosen = [c for c in columns if c not in skip]
    return chosen


def _load_table(
    path: Path,
    label_column: str | None,
    feature_columns: list[str] | None,
    exclude_columns: list[str] | None,
    allow_unlabelled: bool = False,
) -> Dataset:
    import pyarrow as pa

    table = _read_table(path)
    source = str(path)
    columns = list(table.column_names)
    chosen = _select_columns(columns, label_column, feature_columns, exclude_columns, source)
    non_numeric = []
    for c in chosen:
        t = table.schema.field(c).type
        if not (
            pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)
        ):
            non_numeric.append(f"'{c}' ({t})")
    if non_numeric:
        raise DataError(
            f"{source}: {len(non_numeric)} non-numeric feature column(s): {', '.join(non_numeric[:8])}"
            f"{' ...' if len(non_numeric) > 8 else ''} ({table.num_rows} row(s)); leave them out with "
            "--exclude-columns or pick features with --feature-columns"
        )
    if table.num_rows == 0:
        raise DataError(f"{source}: the file has a header but no rows ({len(columns)} column(s))")
    x = (
        np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in chosen])
        if chosen
        else np.zeros((table.num_rows, 0))
    )
    labels = None
    if label_column:
        col = table.column(label_column)
        if col.null_count and not allow_unlabelled:
            raise DataError(
                f"{source}: label column '{label_column}' is empty in {col.null_count} "
                f"of {table.num_rows} row(s); give --semi-supervised to train with partial labels "
                "(1 = anomaly, 0 = normal, empty = unknown)"
            )
        t = col.type
        # An all-empty column reads as type null: every label unknown, refused later for lack of anomalies.
        if not (
            pa.types.is_integer(t)
            or pa.types.is_floating(t)
            or pa.types.is_boolean(t)
            or (allow_unlabelled and pa.types.is_null(t))
        ):
            expected = "0 (normal), 1 (anomaly)" + (" or empty (unknown)" if allow_unlabelled else "")
            raise DataError(f"{source}: label column '{label_column}' must hold {expected}, got type {t}")
        values = col.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN
        labels = check_labels(
            values,
            table.num_rows,
            f"{source}: label column '{label_column}'",
            allow_unlabelled=allow_unlabelled,
        )
    try:
        xx, yy = check_matrix(x, chosen, labels, allow_unlabelled=allow_unlabelled)
    except DataError as exc:
        raise DataError(f"{source}: {exc.message}") from exc
    return Dataset(xx, chosen, yy, source)


def _load_npz(
    path: Path,
    feature_columns: list[str] | None,
    exclude_columns: list[str] | None,
    allow_unlabelled: bool = False,
) -> Dataset:
    source = str(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as exc:
        raise DataError(f"{source}: cannot be read as NPZ ({exc})") from exc
    if "X" not in arrays:
        raise DataError(f"{source}: an NPZ needs an array 'X' (and optionally 'y'); it has {sorted(arrays)}")
    x = arrays["X"]
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    if x.ndim != 2:
        raise DataError(f"{source}: 'X' must be 2-D [rows, features], got shape {x.shape}")
    if "feature_names" in arrays:
        names = [str(n) for n in arrays["feature_names"].tolist()]
    else:
        names = [f"f{i}" for i in range(x.shape[1])]
    if len(names) != x.shape[1]:
        raise DataError(f"{source}: {len(names)} feature_names for {x.shape[1]} columns of 'X'")
    chosen = _select_columns(names, None, feature_columns, exclude_columns, source)
    x = x[:, [names.index(c) for c in chosen]]
    labels = arrays.get("y")
    if labels is not None:
        labels = labels.reshape(-1) if labels.ndim > 1 else labels
    try:
        xx, yy = check_matrix(x, chosen, labels, allow_unlabelled=allow_unlabelled)
    except DataError as exc:
        raise DataError(f"{source}: {exc.message}") from exc
    return Dataset(xx, chosen, yy, source)


def load_dataset(
    path: str | Path,
    *,
    label_column: str | None = None,
    feature_columns: str | Sequence[str] | None = None,
    exclude_columns: str | Sequence[str] | None = None,
    allow_unlabelled: bool = False,
) -> Dataset:
    """Load a CSV (header row), Parquet or NPZ file.

    Parameters
    ----------
    path : str or Path
        The file. NPZ files hold ``X`` and optionally ``y`` (and ``feature_names``); their
        columns are named ``f0``, ``f1``, ... unless ``feature_names`` is present.
    label_column : str, optional
        CSV / Parquet column with 0 = normal, 1 = anomaly (NPZ files use ``y``).
    feature_columns : str or sequence of str, optional
        Columns to use (comma-separated text or a list); default: all but label and excluded.
    exclude_columns : str or sequence of str, optional
        Columns to leave out.
    allow_unlabelled : bool
        Accept empty labels (NaN in an NPZ's ``y``) as :data:`UNLABELLED`, for
        ``--semi-supervised``; otherwise they are refused.

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        Missing, empty, unreadable or unusable files, naming the columns and row counts.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    suffix = p.suffix.lower()
    feats, excl = _split_list(feature_columns), _split_list(exclude_columns)
    if suffix in NPZ_SUFFIXES:
        if label_column:
            log.info("%s: NPZ labels come from its 'y' array; --label-column is ignored", p)
        return _load_npz(p, feats, excl, allow_unlabelled)
    if suffix in CSV_SUFFIXES or suffix in PARQUET_SUFFIXES:
        if p.stat().st_size == 0:
            raise DataError(f"{p}: the file is empty (0 rows, no header)")
        return _load_table(p, label_column, feats, excl, allow_unlabelled)
    raise DataError(
        f"{p}: unknown file type '{suffix}'; use .csv, .tsv, .parquet or .npz "
        "(NPZ with arrays X and optional y)"
    )
