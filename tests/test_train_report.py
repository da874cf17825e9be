"""The report of an unlabelled run (no ROC/PR figure), and `evaluate` on an NPZ file."""

from __future__ import annotations

import json

import numpy as np

from service.cli import main
from training.api import TrainOptions, train_model
from training.fitting.fit import FitConfig
from training.report.html import write_report


def test_report_without_labels(tiny_dataset, tmp_path):
    options = TrainOptions(name="unlabelled", fit=FitConfig(hidden=[16], coding_size=2, max_epochs=8, seed=0))
    result = train_model(tiny_dataset.normal, tiny_dataset.feature_names, None, options=options)
    index = write_report(result, tmp_path / "report")
    files = {p.name for p in index.parent.iterdir()}
    assert "roc_pr.png" not in files
    assert {"learning_curves.png", "scores.png", "first_layer_weights.png", "coding_units.png"} <= files
    page = index.read_text()
    assert "unlabelled" in page and "roc_pr.png" not in page
    assert "roc_auc" not in result.metadata.evaluation
    assert result.metadata.evaluation["normal_scores"]["count"] > 0


def test_train_and_evaluate_an_npz(tiny_dataset, tmp_path, capsys):
    npz = tmp_path / "tiny.npz"
    np.savez(npz, X=tiny_dataset.X, y=tiny_dataset.y)
    model = tmp_path / "npz.onnx"
    argv = [
        "train",
        str(npz),
        "--out",
        str(model),
        "--coding-size",
        "2",
        "--max-epochs",
        "10",
        "--no-progress",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["evaluate", str(model), str(npz), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["model"]["name"] == "tiny" and metrics["anomalies"] == int(tiny_dataset.y.sum())
    assert 0.5 < metrics["roc_auc"] <= 1.0
    # CSV columns are picked by the model's feature names; a missing one is named
    assert main(["evaluate", str(model), str(tiny_dataset.csv_path), "--label-column", "label"]) == 0
    capsys.readouterr()
    short = tmp_path / "short.csv"
    short.write_text("f0,f1,f2\n1,2,3\n4,5,6\n")
    assert main(["evaluate", str(model), str(short)]) == 2
    err = capsys.readouterr().err
    assert "'f3'" in err and "aeguard: error:" in err
