"""`aeguard score --engine spark` in Spark local mode: the same output as the local engine, row for row.

One SparkSession for the whole test session (starting one takes ~20 s), bound to loopback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from batch_support import leftovers, score, summary_json, tiny_table, write_parquet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    pyspark_sql = pytest.importorskip("pyspark.sql", reason="pyspark comes with the 'spark' extra")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        pyspark_sql.SparkSession.builder.master("local[2]")
        .appName("aeguard-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def table(tiny_dataset) -> pa.Table:
    return tiny_table(tiny_dataset)


def spark_output(path) -> pa.Table:
    """A Spark output directory as one table in id order (Spark writes part files)."""
    return pq.read_table(path).replace_schema_metadata(None).sort_by("id")


def test_spark_output_equals_local_output_row_for_row(spark, table, tiny_model_path, tmp_path, capsys):
    source = write_parquet(table, tmp_path / "in.parquet", row_group_rows=100)
    local, on_spark = tmp_path / "local.parquet", tmp_path / "spark.parquet"
    common = ["--model", tiny_model_path, "--input", source, "--id-column", "id", "--keep-columns", "label"]
    common += ["--top-k", "2", "--json"]
    assert score(*common, "--output", local) == 0
    local_doc = summary_json(capsys.readouterr().out)
    assert score(*common, "--output", on_spark, "--engine", "spark") == 0
    spark_doc = summary_json(capsys.readouterr().out)

    assert on_spark.is_dir() and leftovers(tmp_path) == []
    result = spark_output(on_spark)
    assert result.equals(pq.read_table(local))
    assert spark_doc["engine"].startswith("spark local")
    for key in ("rows", "scored_rows", "bad_rows", "anomalies"):
        assert spark_doc[key] == local_doc[key], key

    # A re-run replaces the directory with the same result.
    assert score(*common, "--output", on_spark, "--engine", "spark") == 0
    assert spark_output(on_spark).equals(result)


def test_spark_reads_csv_and_flags_bad_rows_like_the_local_engine(
    spark, table, tiny_model_path, tmp_path, capsys
):
    rows = table.to_pylist()
    rows[5]["f2"] = None
    rows[7]["f3"] = "abc"
    rows[9]["f1"] = float("inf")
    for row in rows:
        for name in ("f1", "f2", "f3"):
            row[name] = None if row[name] is None else str(row[name])
    source = tmp_path / "bad.csv"
    pacsv.write_csv(pa.Table.from_pylist(rows), source)
    local, on_spark = tmp_path / "local.parquet", tmp_path / "spark.parquet"
    common = ["--model", tiny_model_path, "--input", source, "--id-column", "id", "--on-bad-rows", "flag"]
    assert score(*common, "--output", local) == 0
    assert score(*common, "--output", on_spark, "--engine", "spark", "--json") == 0
    doc = summary_json(capsys.readouterr().out)

    expected = pq.read_table(local)
    result = spark_output(on_spark)
    # CSV types are inferred differently (Spark: int32 ids); the values are the same.
    assert result.column("id").to_pylist() == expected.column("id").to_pylist()
    for name in ("score", "normalized_score", "is_anomaly", "severity", "error"):
        assert result.column(name).to_pylist() == expected.column(name).to_pylist(), name
    errors = result.column("error").to_pylist()
    assert errors[5] == "column 'f2' is missing"
    assert errors[7] == "column 'f3' is not a number ('abc')"
    assert errors[9] == "column 'f1' is infinite (inf)"
    assert doc["bad_rows"] == 3 and doc["rows"] == table.num_rows
    assert np.isnan(np.array(result.column("score").to_pylist()[5], dtype=float))


def test_spark_fails_on_bad_rows_naming_them_and_writes_nothing(
    spark, table, tiny_model_path, tmp_path, capsys
):
    rows = table.to_pylist()
    rows[42]["f6"] = float("nan")
    source = write_parquet(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    out = tmp_path / "out.parquet"
    rc = score(
        "--model",
        tiny_model_path,
        "--input",
        source,
        "--output",
        out,
        "--engine",
        "spark",
        "--id-column",
        "id",
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "row with id=42: column 'f6' is NaN" in err and "nothing was written" in err
    assert not out.exists() and leftovers(tmp_path) == []


def test_spark_engine_writes_parquet_only(spark, table, tiny_model_path, tmp_path, capsys):
    source = write_parquet(table, tmp_path / "in.parquet")
    assert (
        score(
            "--model", tiny_model_path, "--input", source, "--output", tmp_path / "o.csv", "--engine", "spark"
        )
        == 2
    )
    assert "the Spark engine writes Parquet" in capsys.readouterr().err


def test_spark_windows_per_series_equal_the_local_run(spark, windowed_model_path, tmp_path, capsys):
    from window_support import series_table

    t = series_table(4, 30, 3)
    t = t.add_column(0, "id", pa.array(np.arange(t.num_rows, dtype=np.int64)))
    source = write_parquet(t, tmp_path / "in.parquet", row_group_rows=16)
    local, on_spark = tmp_path / "local.parquet", tmp_path / "spark.parquet"
    common = ["--model", windowed_model_path, "--input", source, "--id-column", "id", "--top-k", "1"]
    common += ["--chunk-rows", "9", "--json"]
    assert score(*common, "--output", local) == 0
    local_doc = summary_json(capsys.readouterr().out)
    assert score(*common, "--output", on_spark, "--engine", "spark") == 0
    spark_doc = summary_json(capsys.readouterr().out)

    written = pq.read_table(on_spark).replace_schema_metadata(None)
    assert written.column("id").to_pylist() == list(range(t.num_rows))  # input order, no row number
    assert written.equals(pq.read_table(local))
    assert local_doc["warm_up_rows"] == 4 * 4
    for key in ("rows", "scored_rows", "warm_up_rows", "bad_rows", "anomalies"):
        assert spark_doc[key] == local_doc[key], key
