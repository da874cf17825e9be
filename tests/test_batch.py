"""System tests of `aeguard score` (local engine) with real files and the real tiny model.

Every option and failure of issue 4 that needs no server, Pushgateway or Spark: formats, chunking,
carried columns, top-k, bad rows (fail and flag), atomic output, summaries, progress bar,
interrupt.
"""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from batch_support import leftovers, read_output, score, summary_json, tiny_table, write_parquet

from service.cli import main
from service.scorer import Scorer, top_features

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def table(tiny_dataset) -> pa.Table:
    return tiny_table(tiny_dataset)


@pytest.fixture(scope="module")
def scorer(tiny_model_path) -> Scorer:
    return Scorer.load(tiny_model_path)


@pytest.fixture
def parquet_in(table, tmp_path) -> Path:
    return write_parquet(table, tmp_path / "in.parquet")


def bad_table(table: pa.Table) -> pa.Table:
    """The tiny table with features as text and four bad rows: missing, non-numeric, NaN, infinite."""
    columns = {}
    for name in table.column_names:
        values = table.column(name).to_pylist()
        if name.startswith("f"):
            values = [repr(v) for v in values]
        columns[name] = values
    columns["f2"][5] = None
    columns["f3"][7] = "abc"
    columns["f1"][9] = "nan"
    columns["f0"][300] = "inf"
    columns["f4"][301] = "1e39"
    return pa.table(columns)


def test_parquet_scores_equal_the_scorer_with_carried_columns_and_top_k(
    parquet_in, tmp_path, scorer, table, capsys
):
    out = tmp_path / "out.parquet"
    rc = score(
        "--model",
        scorer.source,
        "--input",
        parquet_in,
        "--output",
        out,
        "--id-column",
        "id",
        "--keep-columns",
        "label",
        "--top-k",
        "3",
        "--chunk-rows",
        "100",
    )
    assert rc == 0
    result = pq.read_table(out)
    assert result.column_names == [
        "id",
        "label",
        "score",
        "normalized_score",
        "is_anomaly",
        "severity",
        "top_1_feature",
        "top_1_error",
        "top_2_feature",
        "top_2_error",
        "top_3_feature",
        "top_3_error",
    ]
    assert result.column("id").to_pylist() == table.column("id").to_pylist()
    assert result.column("label").to_pylist() == table.column("label").to_pylist()

    x = np.column_stack([table.column(f).to_numpy() for f in scorer.metadata.feature_names])
    expected = scorer.score(x, with_feature_errors=True)
    np.testing.assert_array_equal(result.column("score").to_numpy(), expected.score)
    np.testing.assert_array_equal(result.column("normalized_score").to_numpy(), expected.normalized_score)
    np.testing.assert_array_equal(result.column("is_anomaly").to_numpy(), expected.is_anomaly)
    assert result.column("severity").to_pylist() == expected.severity_names(scorer.metadata)
    tops = top_features(expected.feature_errors, scorer.metadata.feature_names, 3)
    for i in range(3):
        assert result.column(f"top_{i + 1}_feature").to_pylist() == [t[i][0] for t in tops]
        np.testing.assert_array_equal(
            result.column(f"top_{i + 1}_error").to_numpy(),
            np.array([t[i][1] for t in tops], dtype=np.float32),
        )
    # The model finds the injected anomalies: the labels and the flags agree far better than chance.
    flagged = result.column("is_anomaly").to_numpy()
    labels = table.column("label").to_numpy() == 1
    assert flagged[labels].mean() > 0.8 > flagged[~labels].mean() + 0.5


def test_csv_in_csv_out_and_chunk_size_do_not_change_scores(tiny_dataset, tiny_model_path, tmp_path):
    big_chunks = tmp_path / "a.csv"
    small_chunks = tmp_path / "b.csv"
    assert score("--model", tiny_model_path, "--input", tiny_dataset.csv_path, "--output", big_chunks) == 0
    assert (
        score(
            "--model",
            tiny_model_path,
            "--input",
            tiny_dataset.csv_path,
            "--output",
            small_chunks,
            "--chunk-rows",
            "7",
        )
        == 0
    )
    a, b = read_output(big_chunks), read_output(small_chunks)
    assert a.num_rows == len(tiny_dataset.X)
    assert a.column_names == ["score", "normalized_score", "is_anomaly", "severity"]
    assert a.equals(b)


def test_parquet_dataset_directory_is_read_in_file_order(table, tiny_model_path, tmp_path, capsys):
    directory = tmp_path / "dataset"
    directory.mkdir()
    for i, start in enumerate(range(0, table.num_rows, 200)):
        write_parquet(table.slice(start, 200), directory / f"part-{i:03d}.parquet", row_group_rows=64)
    (directory / "_SUCCESS").write_text("")  # Spark/Hadoop markers are ignored
    single = write_parquet(table, tmp_path / "single.parquet")
    out_dir, out_single = tmp_path / "dir.parquet", tmp_path / "single-out.parquet"
    assert (
        score("--model", tiny_model_path, "--input", directory, "--output", out_dir, "--id-column", "id") == 0
    )
    assert (
        score("--model", tiny_model_path, "--input", single, "--output", out_single, "--id-column", "id") == 0
    )
    assert pq.read_table(out_dir).equals(pq.read_table(out_single))
    assert pq.read_table(out_dir).column("id").to_pylist() == list(range(table.num_rows))


def test_json_summary_counts_match_the_output(parquet_in, tiny_model_path, tmp_path, capsys):
    out = tmp_path / "out.parquet"
    assert score("--model", tiny_model_path, "--input", parquet_in, "--output", out, "--json") == 0
    doc = summary_json(capsys.readouterr().out)
    result = pq.read_table(out)
    severities = result.column("severity").to_pylist()
    assert doc["rows"] == doc["scored_rows"] == result.num_rows
    assert doc["bad_rows"] == 0
    assert doc["anomalies"] == {
        "warning": severities.count("warning"),
        "critical": severities.count("critical"),
    }
    assert doc["anomaly_rows"] == sum(result.column("is_anomaly").to_pylist()) > 0
    assert doc["model_name"] == "tiny" and doc["engine"] == "local"
    assert doc["wall_s"] > 0 and doc["rows_per_s"] > 0
    # The whole run (model load included) is the time printed first and pushed; scoring is part of it.
    assert doc["total_s"] >= doc["wall_s"]


def test_text_summary(parquet_in, tiny_model_path, tmp_path, capsys):
    assert score("--model", tiny_model_path, "--input", parquet_in, "--output", tmp_path / "o.csv") == 0
    text = capsys.readouterr().out
    assert "scored 640 of 640 rows with model 'tiny'" in text
    assert "anomalies:" in text and "warning" in text and "critical" in text and "rows/s" in text
    assert re.search(r"time: [\d.]+ s in all; reading, scoring and writing [\d.]+ s", text), text


def test_missing_feature_columns_are_listed_and_nothing_is_written(table, tiny_model_path, tmp_path, capsys):
    source = write_parquet(table.drop_columns(["f3", "f6"]), tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    assert score("--model", tiny_model_path, "--input", source, "--output", out) == 2
    err = capsys.readouterr().err
    assert "lacks 2 of the model's 8 feature columns: f3, f6" in err
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("option", ["--id-column", "--keep-columns"])
def test_unknown_carried_column_is_an_error(parquet_in, tiny_model_path, tmp_path, capsys, option):
    assert (
        score(
            "--model",
            tiny_model_path,
            "--input",
            parquet_in,
            "--output",
            tmp_path / "o.parquet",
            option,
            "nope",
        )
        == 2
    )
    assert "nope, not in the input" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_bad_rows_fail_naming_rows_columns_values_and_write_nothing(
    table, tiny_model_path, tmp_path, capsys, fmt
):
    bad = bad_table(table)
    if fmt == "csv":
        source = tmp_path / "bad.csv"
        import pyarrow.csv as pacsv

        pacsv.write_csv(bad, source)
    else:
        source = write_parquet(bad, tmp_path / "bad.parquet")
    out = tmp_path / "out.parquet"
    out.write_bytes(b"previous result")  # a failed run must leave the previous output alone
    assert score("--model", tiny_model_path, "--input", source, "--output", out, "--chunk-rows", "64") == 2
    err = capsys.readouterr().err
    assert "nothing was written" in err
    assert "row 6" in err and "column 'f2' is missing" in err
    assert "row 8" in err and "column 'f3' is not a number ('abc')" in err
    assert "row 10" in err and "column 'f1'" in err
    assert "--on-bad-rows flag" in err
    assert "row 301" not in err  # the first bad rows are named; the job stopped at the first bad chunk
    assert out.read_bytes() == b"previous result"
    assert leftovers(tmp_path) == []


def test_flagged_bad_rows_keep_their_place_with_an_error_and_null_scores(
    table, tiny_model_path, tmp_path, capsys
):
    source = write_parquet(bad_table(table), tmp_path / "bad.parquet")
    clean = write_parquet(table, tmp_path / "clean.parquet")
    out, out_clean = tmp_path / "out.parquet", tmp_path / "clean-out.parquet"
    assert (
        score(
            "--model",
            tiny_model_path,
            "--input",
            source,
            "--output",
            out,
            "--on-bad-rows",
            "flag",
            "--id-column",
            "id",
            "--top-k",
            "2",
            "--json",
            "--chunk-rows",
            "64",
        )
        == 0
    )
    doc = summary_json(capsys.readouterr().out)
    assert score("--model", tiny_model_path, "--input", clean, "--output", out_clean, "--top-k", "2") == 0
    result, expected = pq.read_table(out), pq.read_table(out_clean)
    assert result.num_rows == table.num_rows
    assert doc["rows"] == table.num_rows and doc["bad_rows"] == 5 and doc["scored_rows"] == table.num_rows - 5
    errors = result.column("error").to_pylist()
    assert {i: errors[i] for i in (5, 7, 9, 300, 301)} == {
        5: "column 'f2' is missing",
        7: "column 'f3' is not a number ('abc')",
        9: "column 'f1' is NaN",
        300: "column 'f0' is infinite (inf)",
        301: "column 'f4' is 1e+39, beyond float32's range",
    }
    bad = np.zeros(table.num_rows, dtype=bool)
    bad[[5, 7, 9, 300, 301]] = True
    assert all(e is None for e, b in zip(errors, bad, strict=True) if not b)
    for name in ("score", "normalized_score", "is_anomaly", "severity", "top_1_feature", "top_2_error"):
        values = result.column(name)
        assert values.is_null().to_numpy(zero_copy_only=False).tolist() == bad.tolist()
        # Good rows score exactly as in a clean run.
        assert values.filter(pa.array(~bad)).equals(expected.column(name).filter(pa.array(~bad)))


def test_rerun_gives_the_same_result_and_replaces_the_output(parquet_in, tiny_model_path, tmp_path):
    out = tmp_path / "out.parquet"
    assert score("--model", tiny_model_path, "--input", parquet_in, "--output", out) == 0
    first = pq.read_table(out)
    assert score("--model", tiny_model_path, "--input", parquet_in, "--output", out) == 0
    assert pq.read_table(out).equals(first)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("output", "message"),
    [("out.json", "unknown extension '.json'"), ("in.parquet", "is the input file")],
)
def test_bad_output_paths(parquet_in, tiny_model_path, tmp_path, capsys, output, message):
    before = parquet_in.read_bytes()
    assert score("--model", tiny_model_path, "--input", parquet_in, "--output", tmp_path / output) == 2
    assert message in capsys.readouterr().err
    assert parquet_in.read_bytes() == before


def test_output_that_is_a_directory_or_unwritable(parquet_in, tiny_model_path, tmp_path, capsys):
    taken = tmp_path / "taken.parquet"
    taken.mkdir()
    assert score("--model", tiny_model_path, "--input", parquet_in, "--output", taken) == 2
    assert "is a directory" in capsys.readouterr().err
    assert taken.is_dir() and not any(taken.iterdir())
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert score("--model", tiny_model_path, "--input", parquet_in, "--output", blocker / "o.parquet") == 2
    assert f"{blocker} is not a directory" in capsys.readouterr().err


def test_output_in_a_missing_directory_is_refused_not_created(parquet_in, tiny_model_path, tmp_path, capsys):
    missing = tmp_path / "no_such_dir"
    assert score("--model", tiny_model_path, "--input", parquet_in, "--output", missing / "x.parquet") == 2
    err = capsys.readouterr().err
    assert f"{missing} does not exist; create it first" in err and err.count("\n") == 1
    assert not missing.exists()


def test_unreadable_inputs(tiny_model_path, tmp_path, capsys):
    assert (
        score("--model", tiny_model_path, "--input", tmp_path / "nope.csv", "--output", tmp_path / "o.csv")
        == 2
    )
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "data.txt").write_text("f0\n1\n")
    assert (
        score("--model", tiny_model_path, "--input", tmp_path / "data.txt", "--output", tmp_path / "o.csv")
        == 2
    )
    assert "unknown extension '.txt'" in capsys.readouterr().err
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    assert (
        score(
            "--model", tiny_model_path, "--input", tmp_path / "broken.parquet", "--output", tmp_path / "o.csv"
        )
        == 2
    )
    assert "broken.parquet" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_model_is_required_unless_target(parquet_in, tmp_path, capsys):
    assert score("--input", parquet_in, "--output", tmp_path / "o.csv") == 2
    assert "--model is required" in capsys.readouterr().err


def _slow_job(model: Path, tmp_path: Path, table: pa.Table, extra: list[str]) -> tuple[Path, list[str]]:
    """A job big enough (in many tiny chunks) to be interrupted in the middle."""
    big = pa.concat_tables([table] * 200)  # 128 000 rows
    source = write_parquet(big, tmp_path / "big.parquet", row_group_rows=10_000)
    out = tmp_path / "out.parquet"
    args = [
        sys.executable,
        "-m",
        "service.cli",
        "score",
        "--model",
        str(model),
        "--input",
        str(source),
        "--output",
        str(out),
        "--chunk-rows",
        "50",
        *extra,
    ]
    return out, args


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_job_exits_non_zero_and_leaves_no_output(table, tiny_model_path, tmp_path, signum):
    out, args = _slow_job(tiny_model_path, tmp_path, table, ["--no-progress"])
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Wait until the job is writing its temporary file, then interrupt it.
        while not leftovers(tmp_path) and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the job finished before it could be interrupted"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert "interrupted" in err
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_killed_job_leaves_only_a_hidden_temporary_that_the_rerun_removes(table, tiny_model_path, tmp_path):
    out, args = _slow_job(tiny_model_path, tmp_path, table, ["--no-progress"])
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not leftovers(tmp_path) and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the job finished before it could be killed"
        proc.kill()  # SIGKILL: no chance to clean up
    finally:
        proc.wait()
    assert not out.exists()
    assert len(leftovers(tmp_path)) == 1 and leftovers(tmp_path)[0].startswith(".out.parquet.aeguard-tmp-")
    quick = [a if a != "50" else "65536" for a in args]  # the same job in large chunks
    rerun = subprocess.run(quick, cwd=REPO, capture_output=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert leftovers(tmp_path) == []
    assert pq.read_metadata(out).num_rows == table.num_rows * 200


def test_progress_bar_on_a_terminal(table, tiny_model_path, tmp_path):
    source = write_parquet(pa.concat_tables([table] * 20), tmp_path / "in.parquet")
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "service.cli",
                "score",
                "--model",
                str(tiny_model_path),
                "--input",
                str(source),
                "--output",
                str(tmp_path / "o.parquet"),
                "--chunk-rows",
                "500",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=secondary,
            timeout=120,
        )
        os.close(secondary)
        secondary = -1
        chunks = []
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:  # EIO: the terminal has no writer left
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert proc.returncode == 0
    terminal = b"".join(chunks).decode(errors="replace")
    # The total is known from the Parquet metadata: a percentage, rows, a rate and the ETA.
    assert "100%" in terminal and "12.8k/12.8k" in terminal and "rows/s" in terminal
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", terminal)  # [elapsed<remaining]
    assert b"rows/s]" not in proc.stdout  # the bar goes to the terminal (stderr), the summary to stdout


def test_no_progress_bar_when_not_a_terminal(parquet_in, tiny_model_path, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "score",
            "--model",
            str(tiny_model_path),
            "--input",
            str(parquet_in),
            "--output",
            str(tmp_path / "o.parquet"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "rows/s" not in proc.stderr and "%|" not in proc.stderr
    assert "scored 640 of 640 rows" in proc.stdout


def test_severity_column_is_consistent_with_normalized_score(parquet_in, tiny_model_path, tmp_path):
    out = tmp_path / "o.parquet"
    assert score("--model", tiny_model_path, "--input", parquet_in, "--output", out) == 0
    result = pq.read_table(out)
    anomalous = pc.greater_equal(result.column("normalized_score"), 1.0)
    assert anomalous.equals(result.column("is_anomaly"))
    assert pc.equal(result.column("severity"), "none").equals(pc.invert(result.column("is_anomaly")))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_empty_input_is_refused_like_train_refuses_it(table, tiny_model_path, tmp_path, capsys, suffix):
    empty = table.slice(0, 0)
    if suffix == ".csv":
        import pyarrow.csv as pacsv

        source = tmp_path / "empty.csv"
        pacsv.write_csv(empty, source)
    else:
        source = write_parquet(empty, tmp_path / "empty.parquet")
    out = tmp_path / f"out{suffix}"
    assert score("--model", tiny_model_path, "--input", source, "--output", out) == 2
    err = capsys.readouterr().err
    assert err.startswith("aeguard: error:") and "has no rows" in err and "--allow-empty" in err
    assert not out.exists() and leftovers(tmp_path) == []
    # `aeguard train` refuses the same file with exit 2 too.
    if suffix == ".csv":
        assert main(["train", str(source), "--out", str(tmp_path / "m.onnx"), "--no-progress"]) == 2
        assert "no rows" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_allow_empty_gives_an_empty_output_with_the_full_schema(
    table, tiny_model_path, tmp_path, capsys, suffix
):
    empty = table.slice(0, 0)
    if suffix == ".csv":
        import pyarrow.csv as pacsv

        source = tmp_path / "empty.csv"
        pacsv.write_csv(empty, source)
    else:
        source = write_parquet(empty, tmp_path / "empty.parquet")
    out = tmp_path / f"out{suffix}"
    assert (
        score(
            "--model", tiny_model_path, "--input", source, "--output", out, "--id-column", "id", "--json",
            "--allow-empty",
        )
        == 0
    )  # fmt: skip
    assert summary_json(capsys.readouterr().out)["rows"] == 0
    result = read_output(out)
    assert result.num_rows == 0
    assert result.column_names == ["id", "score", "normalized_score", "is_anomaly", "severity"]


def test_threads_do_not_change_scores(parquet_in, tiny_model_path, tmp_path):
    one, two = tmp_path / "one.parquet", tmp_path / "two.parquet"
    assert score("--model", tiny_model_path, "--input", parquet_in, "--output", one, "--top-k", "2") == 0
    args = [
        "--model",
        tiny_model_path,
        "--input",
        parquet_in,
        "--output",
        two,
        "--top-k",
        "2",
        "--threads",
        "2",
    ]
    assert score(*args) == 0
    assert pq.read_table(one).equals(pq.read_table(two))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--master", "local[1]"], "--master only applies to --engine spark"),
        (["--engine", "spark", "--target", "127.0.0.1:1"], "cannot be combined with --engine spark"),
    ],
)
def test_inconsistent_options(parquet_in, tiny_model_path, tmp_path, capsys, extra, message):
    out = tmp_path / "o.parquet"
    assert score("--model", tiny_model_path, "--input", parquet_in, "--output", out, *extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_spark_engine_without_pyspark_says_which_extra(parquet_in, tiny_model_path, tmp_path):
    code = (
        "import sys; sys.modules['pyspark'] = None; from service.cli import main; "
        f"sys.exit(main(['score', '--engine', 'spark', '--model', {str(tiny_model_path)!r}, "
        f"'--input', {str(parquet_in)!r}, '--output', {str(tmp_path / 'o.parquet')!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "pip install 'aeguard[spark]'" in proc.stderr
    assert not (tmp_path / "o.parquet").exists()
