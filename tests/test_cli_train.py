"""`aeguard train` / `evaluate` end to end through the real CLI, on the tiny data set."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from service.cli import main
from service.scorer import Scorer

QUICK = ["--hidden", "16", "--coding-size", "2", "--max-epochs", "15", "--patience", "5", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """One CLI training run with a report and an f1 threshold; returns (model, report dir, stdout)."""
    out = tmp_path_factory.mktemp("cli_train")
    model, report = out / "m.onnx", out / "report"
    argv = ["train", str(tiny_dataset.csv_path), "--out", str(model), "--label-column", "label", *QUICK]
    argv += ["--threshold", "warning=q0.98", "--threshold", "best=f1", "--report", str(report)]
    argv += ["--name", "cli-tiny", "--model-version", "7"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return model, report, buf.getvalue()


def test_train_writes_model_summary_and_report(trained, tiny_dataset):
    model, report, stdout = trained
    meta = Scorer.load(model).metadata
    assert (meta.name, meta.version) == ("cli-tiny", "7")
    assert {t.name for t in meta.thresholds} == {"warning", "best"}
    for line in ("model", "split", "thresholds", "ROC-AUC", "identity check", "parity", "report"):
        assert line in stdout
    # The default ensemble, with the explicit --coding-size 2 applied to every network.
    assert "3 networks averaged: 8 -> 16 -> 2 -> 16 -> 8 tanh; 8 -> 16 -> 2 -> 16 -> 8 gelu;" in stdout
    for name in (
        "index.html",
        "learning_curves.png",
        "scores.png",
        "roc_pr.png",
        "first_layer_weights.png",
        "coding_units.png",
        "feature_errors.png",
        "metadata.json",
    ):
        assert (report / name).stat().st_size > 1000 or name == "metadata.json"
    page = (report / "index.html").read_text()
    assert "scores.png" in page and "coding unit 1" in page and "cli-tiny" in page
    assert json.loads((report / "metadata.json").read_text())["name"] == "cli-tiny"


def test_evaluate_scores_through_the_serving_scorer(trained, tiny_dataset, capsys):
    model, _, _ = trained
    assert (
        main(["evaluate", str(model), str(tiny_dataset.csv_path), "--label-column", "label", "--json"]) == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["rows"] == len(tiny_dataset.X) and metrics["anomalies"] == int(tiny_dataset.y.sum())
    assert metrics["roc_auc"] > 0.9
    scorer = Scorer.load(model)
    expected = scorer.score(tiny_dataset.X)
    assert metrics["severity_counts"]["none"] == int((~expected.is_anomaly).sum())
    assert main(["evaluate", str(model), str(tiny_dataset.csv_path), "--label-column", "label"]) == 0
    text = capsys.readouterr().out
    assert "ROC-AUC" in text and "precision" in text and "best" in text


def test_train_is_deterministic_through_the_cli(trained, tiny_dataset, tmp_path):
    model, _, _ = trained
    again = tmp_path / "again.onnx"
    argv = ["train", str(tiny_dataset.csv_path), "--out", str(again), "--label-column", "label", *QUICK]
    argv += ["--threshold", "warning=q0.98", "--threshold", "best=f1", "--name", "cli-tiny", "--json"]
    assert main(argv) == 0
    a, b = Scorer.load(model), Scorer.load(again)
    np.testing.assert_array_equal(a.score(tiny_dataset.X).score, b.score(tiny_dataset.X).score)
    assert a.metadata.thresholds == b.metadata.thresholds


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--coding-size", "8"], "--allow-overcomplete"),
        (["--threshold", "warning=q2"], "between 0 and 1"),
        (["--label-column", "nope"], "'nope'"),
        (["--max-epochs", "0"], "--max-epochs must be >= 1"),
    ],
)
def test_cli_refusals_exit_2_with_a_message(tiny_dataset, tmp_path, capsys, extra, fragment):
    argv = ["train", str(tiny_dataset.csv_path), "--out", str(tmp_path / "m.onnx"), "--no-progress", *extra]
    if "--label-column" not in extra:
        argv += ["--label-column", "label"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("aeguard: error:") and fragment in err
    assert not (tmp_path / "m.onnx").exists()


def test_bad_file_gives_one_line_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,host\n1,web1\n2,web2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", "train", str(bad), "--out", str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "'host'" in proc.stderr and "non-numeric" in proc.stderr and "2 row" in proc.stderr


def test_default_model_via_cli(tmp_path, capsys):
    out = tmp_path / "default.onnx"
    data = tmp_path / "telemetry.parquet"
    argv = [
        "train",
        "--default",
        "--out",
        str(out),
        "--max-epochs",
        "3",
        "--no-progress",
        "--save-data",
        str(data),
    ]
    assert main(argv) == 0
    meta = Scorer.load(out).metadata
    assert meta.name == "telemetry-default" and meta.n_features == 12
    assert meta.coding_size < meta.n_features
    assert "ROC-AUC" in capsys.readouterr().out
    from training.data.tables import load_dataset

    loaded = load_dataset(data, label_column="label", exclude_columns="timestamp,anomaly_kind")
    assert loaded.feature_names == meta.feature_names
