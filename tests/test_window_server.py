"""A windowed model behind the real server on 127.0.0.1 (port 0) and the real client: unary Score,
ScoreStream carrying each named series' last rows, the per-stream series bound, state freed when a
stream ends, and the same scores row by row, in one call and from the batch job."""

from __future__ import annotations

import json
import queue
import shutil
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from batch_support import score as run_score
from batch_support import write_parquet
from serve_support import scrape, value
from window_support import SERIES_COLUMN, TIME_COLUMN, series_table

from service.client import SeriesRows, StreamError
from service.config import ServerConfig
from service.errors import InvalidInputError
from service.model_store import ModelStore
from service.rpc.api import aeguard_pb2 as pb
from service.rpc.server import ServerHandle, build_server
from service.scorer import Scorer
from service.windows import WindowBuilder

W = 5
MAX_SERIES = 3
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def server(windowed_model_path, single_feature_model_path, tiny_model_path, tmp_path_factory):
    directory = tmp_path_factory.mktemp("served")
    for path in (windowed_model_path, single_feature_model_path, tiny_model_path):
        shutil.copy(path, directory / path.name)
    store = ModelStore()
    store.load_path(directory, "win")
    config = ServerConfig(host="127.0.0.1", port=0, metrics_port=0, max_stream_series=MAX_SERIES)
    handle = build_server(config, store)
    yield handle
    handle.stop(0)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    """30 consecutive rows of one series (host h0), f0..f2."""
    t = series_table(1, 30, 3)
    return np.column_stack([t.column(f"f{j}").to_numpy() for j in range(3)]).astype(np.float32)


def same(a, b) -> None:
    """Equal scores, to float32 rounding: onnxruntime's matrix kernels sum in an order that depends on
    the batch size (one window per call vs many), which moves the last bit now and then."""
    np.testing.assert_allclose(
        np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32), rtol=1e-6, atol=0
    )


def reference(server: ServerHandle, x: np.ndarray) -> np.ndarray:
    """The scores of the windows of ``x`` (one series, no gaps), through the in-process scorer."""
    scorer = server.store.get("win").scorer
    return scorer.score(WindowBuilder(scorer.window, 3).add(x).samples).score


def test_model_info_describes_the_window(client):
    info = client.model_info("win")
    assert info.HasField("window")
    w = info.window
    assert (w.size, w.step, w.max_gap, w.time_column, w.series_column) == (
        5,
        1.0,
        3.0,
        TIME_COLUMN,
        SERIES_COLUMN,
    )
    assert not client.model_info("tiny").HasField("window")  # row-wise
    assert client.model_info("one").window.size == 8


def test_unary_score_marks_warm_up_rows_and_scores_the_rest(client, server, rows):
    want = reference(server, rows)
    per_sample = client.score(rows, model="win", top_k=2, feature_errors=True)
    assert per_sample.warm_up.tolist() == [True] * (W - 1) + [False] * (len(rows) - W + 1)
    same(per_sample.score[W - 1 :], want)
    assert (per_sample.score[: W - 1] == 0).all() and per_sample.severity[: W - 1] == [""] * (W - 1)
    assert per_sample.top_features[0] == [] and len(per_sample.top_features[W - 1]) == 2
    columns = client.score(rows, model="win", columnar=True, top_k=1)
    np.testing.assert_array_equal(columns.warm_up, per_sample.warm_up)
    assert np.isnan(columns.score[: W - 1]).all() and not columns.is_anomaly[: W - 1].any()
    same(columns.score[W - 1 :], want)
    # fewer rows than a window: all warm-up, still an answer
    short = client.score(rows[:3], model="win")
    assert short.warm_up.all()


def test_row_by_row_over_a_stream_one_unary_call_and_the_batch_job_agree(client, server, rows, tmp_path):
    times = T0 + np.arange(len(rows), dtype=float)
    # two series interleaved one row per message: each continues its own windows
    messages = []
    for i in range(len(rows)):
        messages.append(SeriesRows(rows[i : i + 1], series="h0", timestamps=times[i : i + 1]))
        messages.append(SeriesRows(rows[::-1][i : i + 1], series="other", timestamps=times[i : i + 1]))
    replies = list(client.score_stream(messages, model="win"))
    streamed = np.array([r.score[0] for r in replies[0::2]], dtype=np.float32)
    warm = np.array([r.warm_up[0] for r in replies[0::2]])
    assert warm.tolist() == [True] * (W - 1) + [False] * (len(rows) - W + 1)
    unary = client.score(rows, model="win", series="h0", timestamps=times)
    same(streamed[~warm], unary.score[~warm])
    same(unary.score[~warm], reference(server, rows))
    other = np.array([r.score[0] for r in replies[1::2]], dtype=np.float32)
    same(other[W - 1 :], reference(server, rows[::-1]))

    table = pa.table(
        {SERIES_COLUMN: ["h0"] * len(rows), TIME_COLUMN: times}
        | {f"f{j}": pa.array(rows[:, j]) for j in range(3)}
    )
    source, out = write_parquet(table, tmp_path / "h0.parquet"), tmp_path / "out.parquet"
    model = server.store.get("win").source
    assert run_score("--model", model, "--input", source, "--output", out, "--chunk-rows", 4) == 0
    batch = pq.read_table(out).column("score").to_numpy(zero_copy_only=False).astype(np.float32)
    np.testing.assert_array_equal(np.isnan(batch), warm)
    same(batch[~warm], streamed[~warm])


def test_a_gap_in_a_stream_restarts_the_window_and_an_older_row_is_refused(client, rows):
    times = T0 + np.arange(12, dtype=float)
    times[8:] += 10  # a 11 s step: a gap
    messages = [SeriesRows(rows[i : i + 1], "g", times[i : i + 1]) for i in range(12)]
    messages.append(SeriesRows(rows[:1], "g", [T0]))  # back in time
    messages.append(SeriesRows(rows[12:13], "g", [times[-1] + 1]))  # the stream goes on
    replies = list(client.score_stream(messages, model="win", raise_on_error=False))
    warm = [bool(r.warm_up[0]) for r in replies[:12]]
    assert warm == [True] * 4 + [False] * 4 + [True] * 4
    error = replies[12]
    assert isinstance(error, StreamError) and isinstance(error.error, InvalidInputError)
    assert "series 'g'" in error.error.message and "older than the row before it" in error.error.message
    assert not replies[13].warm_up[0]  # rows 8..11 after the gap and this one: a full window


def test_the_series_bound_refuses_one_more_series_counted_and_the_stream_goes_on(client, server, rows):
    before = value(scrape(server.metrics_port), "aeguard_stream_errors_total", code="RESOURCE_EXHAUSTED")
    names = ["a", "b", "c", "d", "a"]
    replies = list(
        client.score_stream(
            [SeriesRows(rows[:W], series=name) for name in names], model="win", raise_on_error=False
        )
    )
    assert [isinstance(r, StreamError) for r in replies] == [False, False, False, True, False]
    refused = replies[3]
    assert refused.error.__class__.__name__ == "LimitExceededError"
    assert f"limit is {MAX_SERIES}" in refused.error.message and "'d'" in refused.error.message
    assert not replies[4].warm_up.any()  # series a continued: its window is full from the first row
    after = value(scrape(server.metrics_port), "aeguard_stream_errors_total", code="RESOURCE_EXHAUSTED")
    assert after == before + 1


def test_streams_free_their_series_when_they_end(client, server, rows, stub):
    for _ in range(40):
        replies = list(
            client.score_stream(
                [SeriesRows(rows[i : i + 2], series=f"s{i % 3}") for i in range(6)], model="win"
            )
        )
        assert len(replies) == 6
    assert value(scrape(server.metrics_port), "aeguard_stream_series") == 0

    # held while the stream is open, freed when the client cancels it
    outgoing: queue.Queue = queue.Queue()
    call = stub.ScoreStream(iter(outgoing.get, None))
    for name in ("x", "y"):
        outgoing.put(
            pb.ScoreRequest(
                model="win", series=name, samples=pb.Matrix(rows=1, cols=3, raw=rows[0].tobytes())
            )
        )
        next(call)
    assert value(scrape(server.metrics_port), "aeguard_stream_series") == 2
    call.cancel()
    outgoing.put(None)
    done = threading.Event()
    for _ in range(200):
        if value(scrape(server.metrics_port), "aeguard_stream_series") == 0:
            done.set()
            break
        threading.Event().wait(0.05)
    assert done.is_set()


def test_a_model_reloaded_mid_stream_starts_its_series_again(client, server, rows, stub):
    outgoing: queue.Queue = queue.Queue()
    call = stub.ScoreStream(iter(outgoing.get, None))

    def send(i: int) -> pb.ScoreResponse:
        x = rows[i : i + 1]
        outgoing.put(
            pb.ScoreRequest(model="win", series="r", samples=pb.Matrix(rows=1, cols=3, raw=x.tobytes()))
        )
        return next(call)

    served, reloaded = server.store.get("win"), False
    try:
        assert [send(i).results[0].warm_up for i in range(W)] == [True] * (W - 1) + [False]
        server.store.swap("win", Scorer(served.scorer.session, served.metadata, "reloaded"))
        reloaded = True
        # the new file's windows start afresh: no row windowed for the old one is mixed in
        assert [send(i).results[0].warm_up for i in range(W, 2 * W)] == [True] * (W - 1) + [False]
        assert value(scrape(server.metrics_port), "aeguard_stream_series") == 1
    finally:
        call.cancel()
        outgoing.put(None)
        if reloaded:
            server.store.swap("win", served)  # the other tests' model, as loaded from its file


def test_a_single_feature_model_serves_windows(client, rows):
    x = rows[:, :1]
    result = client.score(x, model="one")
    assert result.warm_up.sum() == 7 and np.isfinite(result.score[7:]).all()
    streamed = list(client.score_stream([SeriesRows(x[i : i + 1], "s") for i in range(len(x))], model="one"))
    same([r.score[0] for r in streamed[7:]], result.score[7:])


def test_row_wise_models_ignore_series_and_timestamps(client, tiny_dataset):
    x = tiny_dataset.X[:4]
    plain = client.score(x, model="tiny")
    named = client.score(x, model="tiny", series="h", timestamps=[3.0, 2.0, 1.0, 0.0])
    np.testing.assert_array_equal(plain.score, named.score)
    assert not named.warm_up.any()


def test_bad_window_fields_name_the_problem(client, rows):
    with pytest.raises(InvalidInputError, match="timestamps: 2 values for 6 rows"):
        client.score(rows[:6], model="win", timestamps=[1.0, 2.0])
    with pytest.raises(InvalidInputError, match="timestamps: value 1 is nan"):
        client.score(rows[:2], model="win", timestamps=[1.0, float("nan")])
    with pytest.raises(InvalidInputError, match="samples have 2 features per row"):
        client.score(rows[:6, :2], model="win")
    with pytest.raises(InvalidInputError, match="Encode: model 'win' is windowed"):
        client.encode(rows[:6], model="win")


def test_the_batch_job_through_the_server_equals_the_local_one(server, tmp_path, capsys):
    t = series_table(3, 40, 3)
    t = t.add_column(0, "id", pa.array(np.arange(t.num_rows)))
    source = write_parquet(t, tmp_path / "in.parquet")
    local, remote = tmp_path / "local.parquet", tmp_path / "remote.parquet"
    common = ["--input", source, "--id-column", "id", "--chunk-rows", 11, "--top-k", 2]
    assert run_score("--model", server.store.get("win").source, "--output", local, *common) == 0
    target = f"127.0.0.1:{server.port}"
    assert (
        run_score(
            "--target", target, "--model-name", "win", "--output", remote, *common, "--remote-batch-rows", 6
        )
        == 0
    )
    assert pq.read_table(remote).equals(pq.read_table(local))


def test_the_batch_job_through_the_server_refuses_unsorted_rows_naming_the_series(server, tmp_path, capsys):
    t = series_table(2, 20, 3)
    rows_ = t.to_pylist()
    h1 = [i for i, r in enumerate(rows_) if r[SERIES_COLUMN] == "h1"]
    rows_[h1[12]][TIME_COLUMN], rows_[h1[13]][TIME_COLUMN] = (
        rows_[h1[13]][TIME_COLUMN],
        rows_[h1[12]][TIME_COLUMN],
    )
    source = write_parquet(pa.Table.from_pylist(rows_, schema=t.schema), tmp_path / "unsorted.parquet")
    out = tmp_path / "out.parquet"
    code = run_score("--target", f"127.0.0.1:{server.port}", "--model-name", "win", "--input", source,
                     "--output", out, "--chunk-rows", 9)  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "series 'h1'" in err and "older than the row before it" in err


@pytest.mark.slow
def test_the_windows_benchmark_runs_end_to_end(windowed_model_path, tiny_model_path, tmp_path, capsys):
    """`python -m bench.windows`, shrunk: both parts measure, and the ratios follow from the rounds."""
    from bench import windows

    assert windows.main([
        "--model", str(windowed_model_path), "--rowwise-model", str(tiny_model_path), "--rows", "3000",
        "--series", "5", "--chunk-rows", "700", "--messages", "60", "--rounds", "2",
    ]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    batch, stream = doc["batch"], doc["stream"]
    assert batch["windows"] == 3000 - 5 * (W - 1) and len(batch["ratios"]) == 2
    assert batch["ratio"] == pytest.approx(float(np.median(batch["ratios"])), abs=1e-3)
    assert all(v > 0 for v in stream["windowed_cpu_us_per_row"] + stream["rowwise_cpu_us_per_row"])
    assert stream["ratio"] == pytest.approx(float(np.median(stream["ratios"])), abs=1e-3)
