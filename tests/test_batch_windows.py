"""`aeguard score` with a windowed model: windows per series in time order across chunks, one output
row per input row in input order, warm-up rows without a score, gaps, order, bad rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from batch_support import read_output, score, summary_json, write_parquet
from window_support import SERIES_COLUMN, TIME_COLUMN, series_table

from service import artifact
from service.cli import main
from service.scorer import Scorer

W = 5  # the fixture model's window


@pytest.fixture(scope="module")
def scorer(windowed_model_path) -> Scorer:
    return Scorer.load(windowed_model_path)


@pytest.fixture(scope="module")
def table() -> pa.Table:
    """3 series of 40 rows, interleaved in time, with an ``id`` column (input order)."""
    t = series_table(3, 40, 3)
    return t.add_column(0, "id", pa.array(np.arange(t.num_rows, dtype=np.int64)))


def expected_scores(scorer: Scorer, table: pa.Table) -> np.ndarray:
    """Per input row: the score of the W rows of its series ending at it (NaN for warm-up), by plain
    numpy slicing of each series and one onnxruntime call: independent of the job's machinery."""
    x = np.column_stack([table.column(f"f{j}").to_numpy() for j in range(3)]).astype(np.float32)
    hosts = np.array(table.column(SERIES_COLUMN).to_pylist())
    times = table.column(TIME_COLUMN).to_numpy()
    out = np.full(len(x), np.nan, dtype=np.float32)
    for host in np.unique(hosts):
        idx = np.flatnonzero(hosts == host)
        runs = np.split(idx, np.flatnonzero(np.diff(times[idx]) > 3.0) + 1)  # gaps: > 3 steps of 1 s
        for run in runs:
            if len(run) < W:
                continue
            windows = np.stack([x[run[t - W + 1 : t + 1]] for t in range(W - 1, len(run))])
            got = scorer.session.run([artifact.OUTPUT_SCORE], {artifact.INPUT_NAME: windows})[0]
            out[run[W - 1 :]] = got
    return out


def run_job(model, source, out, *extra, capsys=None) -> dict:
    code = score("--model", model, "--input", source, "--output", out, "--id-column", "id", "--json", *extra)
    assert code == 0
    return summary_json(capsys.readouterr().out) if capsys is not None else {}


@pytest.mark.parametrize("chunk_rows", [7, 100_000])
def test_windows_continue_across_chunks_one_row_out_per_row_in_input_order(
    scorer, table, windowed_model_path, tmp_path, capsys, chunk_rows
):
    source = write_parquet(table, tmp_path / "in.parquet", row_group_rows=7)
    out = tmp_path / "out.parquet"
    doc = run_job(windowed_model_path, source, out, "--chunk-rows", chunk_rows, "--top-k", "2", capsys=capsys)
    result = pq.read_table(out)
    assert result.column("id").to_pylist() == list(range(table.num_rows))  # input order, every row
    got = result.column("score").to_numpy(zero_copy_only=False).astype(np.float32)
    want = expected_scores(scorer, table)
    warm = np.isnan(want)
    assert warm.sum() == 3 * (W - 1)
    np.testing.assert_array_equal(np.isnan(got), warm)
    np.testing.assert_allclose(got[~warm], want[~warm], rtol=1e-5, atol=1e-7)
    # warm-up rows: every result column empty but is_anomaly, which is false
    rows = result.to_pylist()
    for i in np.flatnonzero(warm):
        row = rows[i]
        assert row["is_anomaly"] is False
        assert row["severity"] is None and row["normalized_score"] is None and row["top_1_feature"] is None
    assert all(rows[i]["severity"] is not None for i in np.flatnonzero(~warm))
    assert doc["rows"] == table.num_rows and doc["warm_up_rows"] == 3 * (W - 1)
    assert doc["scored_rows"] == table.num_rows - 3 * (W - 1) and doc["bad_rows"] == 0


def test_a_gap_restarts_the_window(scorer, table, windowed_model_path, tmp_path, capsys):
    # drop 10 s of host h1: the next W-1 of its rows warm up again
    hosts = np.array(table.column(SERIES_COLUMN).to_pylist())
    times = table.column(TIME_COLUMN).to_numpy()
    t0 = times.min()
    keep = ~((hosts == "h1") & (times >= t0 + 20) & (times < t0 + 30))
    gapped = table.filter(pa.array(keep))
    source = write_parquet(gapped, tmp_path / "gap.parquet")
    out = tmp_path / "out.parquet"
    doc = run_job(windowed_model_path, source, out, "--chunk-rows", 16, capsys=capsys)
    got = pq.read_table(out).column("score").to_numpy(zero_copy_only=False).astype(np.float32)
    want = expected_scores(scorer, gapped)
    assert doc["warm_up_rows"] == 4 * (W - 1)  # three series' starts and one restart
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=1e-5, atol=1e-7)


def test_rows_going_back_in_time_are_refused_naming_the_series(table, windowed_model_path, tmp_path, capsys):
    rows = table.to_pylist()
    h2 = [i for i, r in enumerate(rows) if r[SERIES_COLUMN] == "h2"]
    a, b = h2[10], h2[11]
    rows[a][TIME_COLUMN], rows[b][TIME_COLUMN] = rows[b][TIME_COLUMN], rows[a][TIME_COLUMN]
    source = write_parquet(pa.Table.from_pylist(rows, schema=table.schema), tmp_path / "unsorted.parquet")
    out = tmp_path / "out.parquet"
    code = main(
        [
            *("score", "--no-progress", "--model", str(windowed_model_path), "--input", str(source)),
            *("--output", str(out), "--chunk-rows", "8"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "series 'h2'" in err and "older than the row before it" in err and "sort the input by time" in err


def test_a_bad_row_restarts_its_series_window_in_flag_mode(scorer, table, windowed_model_path, tmp_path):
    rows = table.to_pylist()
    h0 = [i for i, r in enumerate(rows) if r[SERIES_COLUMN] == "h0"]
    bad = h0[20]
    rows[bad]["f1"] = None
    source = write_parquet(pa.Table.from_pylist(rows, schema=table.schema), tmp_path / "bad.parquet")
    out = tmp_path / "out.csv"
    assert (
        score("--model", windowed_model_path, "--input", source, "--output", out, "--on-bad-rows", "flag")
        == 0
    )
    result = read_output(out)
    errors = result.column("error").to_pylist()
    assert errors[bad] == "column 'f1' is missing" and result.column("is_anomaly")[bad].as_py() is None
    got = result.column("score").to_numpy(zero_copy_only=False)
    # h0's next W-1 rows after the bad one have no window; its W-th does
    after = h0[21 : 21 + W]
    assert np.isnan(got[after[: W - 1]]).all() and not np.isnan(got[after[W - 1]])
    assert result.column("is_anomaly").to_pylist()[after[0]] is False


def test_a_single_feature_model_scores_windows(single_feature_model_path, tmp_path, capsys):
    t = series_table(2, 30, 1)
    source = write_parquet(t.add_column(0, "id", pa.array(np.arange(t.num_rows))), tmp_path / "one.parquet")
    out = tmp_path / "out.parquet"
    doc = run_job(single_feature_model_path, source, out, "--chunk-rows", 5, capsys=capsys)
    got = pq.read_table(out).column("score").to_numpy(zero_copy_only=False)
    assert doc["warm_up_rows"] == 2 * 7 and np.isfinite(got).sum() == t.num_rows - 14


def test_the_time_and_series_columns_can_be_renamed_or_left_out(table, windowed_model_path, tmp_path, capsys):
    renamed = table.rename_columns([{"host": "node", "ts": "when"}.get(c, c) for c in table.column_names])
    source = write_parquet(renamed, tmp_path / "renamed.parquet")
    out = tmp_path / "out.parquet"
    code = main(
        [
            "score",
            "--no-progress",
            "--model",
            str(windowed_model_path),
            "--input",
            str(source),
            "--output",
            str(out),
        ]
    )
    assert code == 2 and "no time column 'ts'" in capsys.readouterr().err
    run_job(windowed_model_path, source, out, "--series-column", "node", "--time-column", "when")
    named = pq.read_table(out).column("score")
    orig = tmp_path / "orig.parquet"
    run_job(windowed_model_path, write_parquet(table, tmp_path / "in.parquet"), orig)
    assert named.equals(pq.read_table(orig).column("score"))
    # one series, no times: rows taken as they come
    run_job(windowed_model_path, source, out, "--series-column", "", "--time-column", "")
    assert pq.read_table(out).column("score").null_count == W - 1


def test_inspect_shows_the_window(windowed_model_path, capsys):
    assert main(["inspect", str(windowed_model_path)]) == 0
    text = capsys.readouterr().out
    assert "window         5 consecutive rows per sample" in text
    assert "series column 'host'" in text and "time column 'ts'" in text and "step 1 s" in text
