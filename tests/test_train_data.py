"""Data loading: formats, column selection, and every refusal naming the columns and row counts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.errors import DataError
from training.data.tables import check_matrix, load_dataset


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_with_label_and_columns(tmp_path):
    path = write(tmp_path, "d.csv", "ts,a,b,c,label\nx,1,2,3,0\ny,4,5,6,1\nz,7,8,9,0\n")
    data = load_dataset(path, label_column="label", exclude_columns="ts")
    assert data.feature_names == ["a", "b", "c"]
    assert data.x.dtype == np.float32 and data.x.shape == (3, 3)
    assert data.labels.tolist() == [0, 1, 0]
    only = load_dataset(path, feature_columns="c,a")
    assert only.feature_names == ["c", "a"] and only.x[0].tolist() == [3, 1]
    assert only.labels is None


def test_parquet_and_npz(tmp_path):
    table = pa.table({"u": [1.0, 2.0, 3.0], "v": [3, 2, 1], "y": [0, 0, 1]})
    pq.write_table(table, tmp_path / "d.parquet")
    data = load_dataset(tmp_path / "d.parquet", label_column="y")
    assert data.feature_names == ["u", "v"] and data.labels.tolist() == [0, 0, 1]
    np.savez(tmp_path / "d.npz", X=np.arange(12.0).reshape(4, 3), y=np.array([0, 1, 0, 0]))
    npz = load_dataset(tmp_path / "d.npz")
    assert npz.feature_names == ["f0", "f1", "f2"] and npz.labels.tolist() == [0, 1, 0, 0]


def test_real_adbench_file_loads():
    data = load_dataset("/work/shared/datasets/adbench/4_breastw.npz")
    assert data.x.shape == (683, 9) and int(data.labels.sum()) == 239


@pytest.mark.parametrize(
    ("name", "text", "kwargs", "expected"),
    [
        ("empty.csv", "", {}, ["empty", "0 rows"]),
        ("header.csv", "a,b\n", {}, ["no rows", "2 column"]),
        ("one.csv", "a,b\n1,2\n", {}, ["single row", "2 column"]),
        ("text.csv", "a,host,b\n1,web1,2\n3,web2,4\n", {}, ["'host'", "non-numeric", "2 row"]),
        ("nan.csv", "a,b\n1,\n2,nan\n3,4\n", {}, ["'b'", "2 NaN", "2 of 3 row"]),
        ("inf.csv", "a,b\ninf,1\n2,2\n3,3\n", {}, ["'a'", "Inf", "1 of 3 row"]),
        ("big.csv", "a,b\n1e300,1\n2,2\n3,3\n", {}, ["'a'", "overflow"]),
        (
            "lab.csv",
            "a,label\n1,0\n2,2\n3,1\n",
            {"label_column": "label"},
            ["'label'", "1 of 3 row", "0 (normal)"],
        ),
        ("lab2.csv", "a,b\n1,0\n2,1\n", {"label_column": "label"}, ["'label'", "'a'", "'b'"]),
        ("feat.csv", "a,b\n1,0\n2,1\n", {"feature_columns": "a,zz"}, ["'zz'"]),
        ("excl.csv", "a,b\n1,0\n2,1\n", {"exclude_columns": "a,b"}, ["no feature columns", "2 row"]),
        ("data.json", "{}", {}, ["unknown file type", ".json"]),
    ],
)
def test_bad_input_is_refused_with_names_and_counts(tmp_path, name, text, kwargs, expected):
    path = write(tmp_path, name, text)
    with pytest.raises(DataError) as err:
        load_dataset(path, **kwargs)
    for fragment in expected:
        assert fragment in err.value.message, err.value.message
    assert str(path) in err.value.message


def test_missing_file_and_npz_without_x(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "nope.csv")
    np.savez(tmp_path / "bad.npz", data=np.zeros((3, 2)))
    with pytest.raises(DataError, match=r"array 'X'.*'data'"):
        load_dataset(tmp_path / "bad.npz")


def test_check_matrix_refuses_duplicates_and_mismatched_labels():
    with pytest.raises(DataError, match=r"duplicate.*'a'"):
        check_matrix(np.zeros((3, 2)), ["a", "a"])
    with pytest.raises(DataError, match="one label per row"):
        check_matrix(np.zeros((3, 2)), ["a", "b"], np.zeros(2))
