"""Windowed models (issue 22), the training side: windows, time-blocked splits, export, CLI, evaluate."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service import artifact
from service.cli import main
from service.errors import DataError, InvalidInputError
from service.scorer import Scorer
from service.windows import WindowBuilder
from training.api import train_windowed
from training.cli.evaluate import evaluate_file
from training.data.samples import RowContext
from training.data.window_splits import blocked_folds, shares_rows, train_validation
from training.data.windows import AUTO_MAX_WINDOW, AUTO_MIN_WINDOW, WindowOptions
from training.fitting.fit import FitConfig
from training.pipeline import fingerprint
from training.registry import ARCHITECTURES, WINDOWED
from training.result import TrainOptions

QUICK = TrainOptions(fit=FitConfig(max_epochs=4, patience=2, min_epochs=1, hidden=[8]), name="w")
CLI_QUICK = ["--hidden", "8", "--max-epochs", "4", "--patience", "2", "--no-progress"]


def _series(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Smooth, correlated metrics with noise: ``[n, d]`` float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    base = np.sin(2 * np.pi * t / 50)[:, None] * np.linspace(1, 2, d)[None, :]
    return (10 + base + 0.1 * rng.standard_normal((n, d))).astype(np.float32)


def _spans(ends: np.ndarray, w: int) -> list[set[int]]:
    return [set(range(e - w + 1, e + 1)) for e in ends]


def test_blocked_folds_never_share_a_row_between_training_and_scored_windows():
    w = 6
    ends = np.concatenate([np.arange(5, 200), np.arange(210, 400)])  # two runs (a gap between)
    trainable = np.ones(len(ends), dtype=bool)
    trainable[50:60] = False  # windows over an anomaly do not train
    for fold in blocked_folds(ends, trainable, w, folds=3):
        scored_rows = set().union(*_spans(ends[fold.scored], w))
        for rows in (_spans(ends[fold.train], w), _spans(ends[fold.validation], w)):
            assert not any(span & scored_rows for span in rows)
        assert trainable[fold.train].all()
        assert not shares_rows(ends, fold.train, fold.scored, w)
        assert not shares_rows(ends, fold.train, fold.validation, w)
    train, validation = train_validation(np.arange(len(ends)), ends, w)
    assert not set().union(*_spans(ends[train], w)) & set().union(*_spans(ends[validation], w))


def test_blocked_folds_refuse_too_few_windows():
    with pytest.raises(DataError, match="training windows"):
        blocked_folds(np.arange(4, 30), np.ones(26, dtype=bool), 5, folds=2)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A windowed model on two features, W = 8, with a gap in its times."""
    x = _series(400, 2)
    times = np.arange(400, dtype=np.float64) * 60.0
    times[200:] += 3600.0  # one gap of an hour in a series sampled every minute
    path = tmp_path_factory.mktemp("window") / "w.onnx"
    result = train_windowed(
        x, ["a", "b"], path, context=RowContext(times, None, "t", None),
        window=WindowOptions(8), options=QUICK,
    )  # fmt: skip
    return result, x, times


def test_exported_graph_equals_torch_on_windows(small_model):
    result, x, times = small_model
    windows = WindowBuilder(Scorer.load(result.path).window, 2).add(x, times=times).samples
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    got = session.run(list(artifact.OUTPUT_NAMES), {artifact.INPUT_NAME: windows})
    with torch.no_grad():
        expected = [t.numpy() for t in result.graph(torch.from_numpy(windows))]
    for name, e, g in zip(artifact.OUTPUT_NAMES, expected, got, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4, err_msg=name)
    score, feature_errors, codes, rec = got
    np.testing.assert_allclose(score, feature_errors.mean(axis=1), rtol=1e-5)
    assert codes.shape == (len(windows), result.metadata.coding_size)
    assert rec.shape == (len(windows), 2)
    assert result.metadata.export["parity_worst_fraction_of_tolerance"] <= 1.0


def test_the_windowed_kind_trains_through_the_pipeline(small_model):
    """A registry entry: the pipeline's shared steps wrote its metadata (fingerprint of the rows as
    given, library versions, version hash), with the entry's own graph, fields and cross-fitting."""
    result, x, _ = small_model
    meta = result.metadata
    assert result.architecture == WINDOWED and ARCHITECTURES[WINDOWED].fit is not None
    assert meta.architecture["kind"] == ARCHITECTURES[WINDOWED].kind
    assert meta.architecture["channels"] == ["value", "stillness", "log_level"]
    assert (
        meta.architecture["layer_sizes"][0] == 3 * 2 and meta.coding_size == meta.architecture["coding_size"]
    )
    assert meta.training["fingerprint_sha256"] == fingerprint(x, ["a", "b"])
    assert meta.versions["torch"] == torch.__version__ and meta.created_at and len(meta.version) == 12
    assert meta.training["crossfit"]["folds"] >= 2 and meta.evaluation["split"].startswith("every window")
    assert len(result.scores) == len(result.x) == meta.training["windows"]


def test_gaps_restart_the_window_in_training(small_model):
    result, _, _ = small_model
    meta = result.metadata
    assert meta.window["gaps"] == 1
    assert meta.window["step"] == 60.0
    # Two runs of 200 rows: each loses its first W - 1 rows to warm-up.
    assert meta.training["windows"] == 400 - 2 * 7
    # The rows came in time order, so each window's score belongs to the input row it ends at.
    assert result.rows.min() == 7 and 200 + 7 in result.rows and 200 + 6 not in result.rows


def test_windowed_model_loads_in_the_scorer_and_scores_windows(small_model):
    result, x, times = small_model
    scorer = Scorer.load(result.path)
    assert scorer.metadata.is_windowed and scorer.metadata.window_size == 8
    built = WindowBuilder(scorer.window, 2).add(x, times=times)
    batch = scorer.score(built.samples, with_feature_errors=True)
    assert np.isfinite(batch.score).all() and batch.feature_errors.shape == (len(built.rows), 2)
    with pytest.raises(InvalidInputError, match="windows of 8 rows"):
        scorer.score(x[:5])


def test_a_single_feature_trains_serves_and_scores(tmp_path):
    x = _series(300, 1)
    result = train_windowed(x, ["only"], tmp_path / "one.onnx", window=WindowOptions(10), options=QUICK)
    arch = result.metadata.architecture
    assert arch["undercomplete"] and arch["coding_size"] < arch["layer_sizes"][0]
    scorer = Scorer.load(result.path)
    frozen = np.repeat(x[100:101], 10, axis=0)[None]  # a stuck value: stillness must show
    normal = x[100:110][None]
    assert scorer.score(frozen).score[0] > scorer.score(normal).score[0]


def test_unsorted_rows_are_sorted_by_time(tmp_path, small_model):
    result, x, times = small_model
    rng = np.random.default_rng(3)
    shuffle = rng.permutation(len(x))
    again = train_windowed(
        x[shuffle], ["a", "b"], tmp_path / "shuffled.onnx",
        context=RowContext(times[shuffle], None, "t", None),
        window=WindowOptions(8), options=QUICK,
    )  # fmt: skip
    assert again.metadata.window["rows_sorted"] is True and result.metadata.window["rows_sorted"] is False
    np.testing.assert_array_equal(again.x, result.x)  # the same windows, in time order
    np.testing.assert_array_equal(shuffle[again.rows], result.rows)
    np.testing.assert_allclose(again.scores, result.scores, rtol=1e-6)


def test_duplicate_times_without_a_series_column_are_refused():
    times = np.repeat(np.arange(100.0), 2)
    with pytest.raises(DataError, match="share a time"):
        train_windowed(_series(200, 2), ["a", "b"], None, context=RowContext(times, None, "t", None),
                       window=WindowOptions(5), options=QUICK)  # fmt: skip


def test_series_are_windowed_apart(tmp_path):
    x = np.concatenate([_series(150, 2, 1), _series(150, 2, 2)])
    series = np.array(["a"] * 150 + ["b"] * 150)
    times = np.concatenate([np.arange(150.0), np.arange(150.0)])
    order = np.random.default_rng(0).permutation(300)  # interleaved rows
    result = train_windowed(
        x[order], ["m1", "m2"], None, context=RowContext(times[order], series[order], "t", "s"),
        window=WindowOptions(6), options=QUICK,
    )  # fmt: skip
    assert result.metadata.window["series"] == 2 and result.metadata.window["series_column"] == "s"
    assert result.metadata.training["windows"] == 2 * (150 - 5)


def test_auto_picks_a_window_and_records_it():
    result = train_windowed(
        _series(400, 3), ["a", "b", "c"], None, window=WindowOptions("auto"), options=QUICK
    )
    w = result.metadata.window
    assert w["chosen_by"] == "auto" and AUTO_MIN_WINDOW <= w["size"] <= AUTO_MAX_WINDOW
    assert "autocorrelation" in w["auto"]["rule"] and len(w["auto"]["lags"]) == 3


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    """`aeguard train --window 6 --time-column ts` on a CSV with ISO times and a label, via the real CLI."""
    out = tmp_path_factory.mktemp("window_cli")
    x = _series(300, 2)
    y = np.zeros(300, dtype=int)
    y[250:260] = 1
    x[250:260, 0] = x[249, 0]  # a stuck sensor
    stamps = [f"2026-01-01T{i // 60:02d}:{i % 60:02d}:00" for i in range(300)]
    csv = out / "metrics.csv"
    csv.write_text(
        "ts,a,b,label\n"
        + "".join(f"{s},{a},{b},{lab}\n" for s, (a, b), lab in zip(stamps, x, y, strict=True))
    )
    model = out / "m.onnx"
    buf = io.StringIO()
    argv = [
        "train",
        str(csv),
        "--out",
        str(model),
        "--window",
        "6",
        "--time-column",
        "ts",
        "--label-column",
        "label",
    ]
    with contextlib.redirect_stdout(buf):
        assert main([*argv, *CLI_QUICK]) == 0
    return model, csv, buf.getvalue()


def test_cli_trains_a_windowed_model_that_loads_and_evaluates(cli_model):
    model, csv, text = cli_model
    assert "6 consecutive rows per sample" in text and "time column 'ts'" in text and "step 60 s" in text
    scorer = Scorer.load(model)
    assert scorer.metadata.feature_names == ["a", "b"] and scorer.window.time_column == "ts"
    metrics = evaluate_file(str(model), str(csv), "label")
    assert metrics["windows"] == {"size": 6, "warm_up_rows": 5, "gaps": 0}
    assert metrics["rows"] == 295 and metrics["anomalies"] == 10


def test_inspect_shows_the_window(cli_model):
    model, _, _ = cli_model
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["inspect", str(model)]) == 0
    text = buf.getvalue()
    assert "window         6 consecutive rows per sample" in text and "time column 'ts'" in text
    assert "W chosen by user" in text and "0 gap(s) in the training data" in text
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["inspect", str(model), "--json"]) == 0
    assert json.loads(buf.getvalue())["window"]["size"] == 6


def test_window_options_are_checked(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("a,b\n1,2\n3,4\n")
    for extra, message in (
        (["--time-column", "a"], "apply with --window"),
        (["--window", "1"], "between 2 and"),
        (["--window", "x"], "or 'auto'"),
        (["--window", "4", "--semi-supervised", "--label-column", "b"], "not available with --window"),
    ):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["train", str(csv), "--out", str(tmp_path / "m.onnx"), *extra])
        assert code != 0 and message in err.getvalue(), (extra, err.getvalue())


def test_the_batch_job_scores_a_cli_trained_model_as_evaluate_does(cli_model, tmp_path):
    import pyarrow.parquet as pq

    from training.data.windows import model_context, score_rows

    model, csv, _ = cli_model
    out = tmp_path / "scored.parquet"
    with contextlib.redirect_stdout(io.StringIO()):
        assert (
            main(["score", "--model", str(model), "--input", str(csv), "--output", str(out), "--no-progress"])
            == 0
        )
    table = pq.read_table(out)
    scorer = Scorer.load(model)
    data = np.loadtxt(csv, delimiter=",", skiprows=1, usecols=(1, 2), dtype=np.float32)
    expected, _, _ = score_rows(scorer, data, model_context(csv, scorer.window, str(csv)))
    got = np.array([np.nan if v is None else v for v in table.column("score").to_pylist()], dtype=np.float32)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got[5:], expected[5:], rtol=1e-6)
    assert table.column("is_anomaly").to_pylist()[:5] == [False] * 5
