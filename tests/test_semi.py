"""Few labels (`aeguard train --semi-supervised`): empty labels, the anomaly head, the artifact, refusals."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from service.cli import main
from service.errors import DataError
from service.scorer import Scorer
from training.data.tables import UNLABELLED, load_dataset
from training.fitting.semi import CALIBRATED_ON_LABELLED, make_semi_splits, reconstruction_evidence
from training.models.semi import positive_softplus

QUICK = [
    "--hidden",
    "16",
    "--coding-size",
    "2",
    "--activation",
    "tanh",
    "--max-epochs",
    "15",
    "--no-progress",
]
LABELLED_ANOMALIES = 10
LABELLED_NORMAL = 200


def write_csv(path: Path, x: np.ndarray, labels: list[str]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*(f"f{i}" for i in range(x.shape[1])), "label"])
        for row, label in zip(x, labels, strict=True):
            writer.writerow([*(repr(float(v)) for v in row), label])
    return path


def partial_labels(y: np.ndarray) -> np.ndarray:
    """The tiny set's labels with only the first 10 anomalies and 200 normal rows kept; the rest unknown."""
    out = np.full(len(y), UNLABELLED, dtype=np.int8)
    out[np.flatnonzero(y == 1)[:LABELLED_ANOMALIES]] = 1
    out[np.flatnonzero(y == 0)[:LABELLED_NORMAL]] = 0
    return out


@pytest.fixture(scope="module")
def semi_model(tiny_dataset, tmp_path_factory):
    """`aeguard train --semi-supervised` on the tiny set with most labels empty: (model, stdout, labels)."""
    out = tmp_path_factory.mktemp("semi")
    labels = partial_labels(tiny_dataset.y)
    data = write_csv(out / "partial.csv", tiny_dataset.X, ["" if v == UNLABELLED else str(v) for v in labels])
    model = out / "semi.onnx"
    argv = ["train", str(data), "--out", str(model), "--label-column", "label", "--semi-supervised", *QUICK]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return model, buf.getvalue(), labels


def test_trains_with_empty_labels_and_says_what_calibrated_it(semi_model):
    model, stdout, _ = semi_model
    assert "few labels" in stdout and "10 labelled anomalies, 200 labelled normal, 430 unlabelled" in stdout
    assert f"calibrated on {CALIBRATED_ON_LABELLED}" in stdout
    meta = Scorer.load(model).metadata
    semi = meta.training["semi_supervised"]
    assert (semi["labelled_anomalies"], semi["labelled_normal"], semi["unlabelled"]) == (10, 200, 430)
    assert semi["calibrated_on"] == CALIBRATED_ON_LABELLED and semi["calibration_rows"] == 30
    assert meta.architecture["kind"] == "dense_autoencoder_with_anomaly_head"


def test_the_servers_scorer_loads_it_unchanged_and_anomalies_score_higher(semi_model, tiny_dataset):
    model, _, labels = semi_model
    scorer = Scorer.load(model)  # the same loader the gRPC server and the batch job use
    batch = scorer.score(tiny_dataset.X, with_feature_errors=True)
    assert (batch.score > 0).all() and batch.feature_errors is not None
    assert batch.feature_errors.shape == tiny_dataset.X.shape
    y = tiny_dataset.y
    # The labelled anomalies, and the anomalies nobody labelled, outrank the normal rows.
    assert batch.score[labels == 1].min() > np.median(batch.score[y == 0])
    unseen = labels == UNLABELLED  # 30 anomalies and 400 normal rows
    assert roc_auc_score(y[unseen], batch.score[unseen]) > 0.95
    assert batch.is_anomaly[y == 1].mean() > batch.is_anomaly[y == 0].mean()
    assert scorer.encode(tiny_dataset.X[:3]).shape == (3, 2)


def test_feature_errors_still_come_from_the_reconstruction(tiny_dataset, tmp_path):
    from training.api import TrainOptions, train_model
    from training.fitting.fit import FitConfig

    options = TrainOptions(
        fit=FitConfig(hidden=[16], coding_size=2, activation="tanh", max_epochs=15), semi_supervised=True
    )
    labels = partial_labels(tiny_dataset.y).astype(float)
    labels[labels == UNLABELLED] = np.nan  # NaN is "unknown" too, as an NPZ's y holds it
    result = train_model(
        tiny_dataset.X, tiny_dataset.feature_names, tmp_path / "m.onnx", labels=labels, options=options
    )
    batch = Scorer.load(tmp_path / "m.onnx").score(tiny_dataset.X, with_feature_errors=True)
    with torch.no_grad():
        reconstruction = result.graph.reconstruction_score(torch.from_numpy(tiny_dataset.X)).numpy()
    assert batch.feature_errors is not None
    np.testing.assert_allclose(batch.feature_errors.mean(axis=1), reconstruction, rtol=1e-3, atol=1e-4)
    # The exported score is the head's, not the reconstruction's.
    assert not np.allclose(batch.score, reconstruction, rtol=1e-2)


def test_inspect_names_the_calibration_source(semi_model, capsys):
    model, _, _ = semi_model
    assert main(["inspect", str(model)]) == 0
    assert "few labels     10 labelled anomalies" in capsys.readouterr().out
    assert main(["inspect", str(model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["training"]["semi_supervised"]["labelled_normal"] == 200


def refusal(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aeguard: error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("labels", "semi", "expected"),
    [
        (["", "0"], True, "needs at least one row labelled 1 (anomaly)"),
        (["", "1"], False, "is empty in 320 of 640 row(s); give --semi-supervised"),
        (["2", "", "1", "0"], True, "must be 0 (normal), 1 (anomaly) or empty (unknown): 160 of 640"),
        (["yes", "no"], True, "must hold 0 (normal), 1 (anomaly) or empty (unknown), got type string"),
    ],
)
def test_bad_labels_are_refused_with_one_line(tiny_dataset, tmp_path, capsys, labels, semi, expected):
    cells = [labels[i % len(labels)] for i in range(len(tiny_dataset.y))]
    data = write_csv(tmp_path / "bad.csv", tiny_dataset.X, cells)
    argv = ["train", str(data), "--out", str(tmp_path / "m.onnx"), "--label-column", "label", *QUICK]
    err = refusal(capsys, argv + (["--semi-supervised"] if semi else []))
    assert expected in err, err


def test_too_few_labelled_rows_to_calibrate_is_refused(tiny_dataset, tmp_path, capsys):
    rows = np.r_[np.flatnonzero(tiny_dataset.y == 0)[:60], np.flatnonzero(tiny_dataset.y == 1)[:5]]
    data = write_csv(tmp_path / "few.csv", tiny_dataset.X[rows], [str(v) for v in tiny_dataset.y[rows]])
    argv = [
        "train",
        str(data),
        "--out",
        str(tmp_path / "m.onnx"),
        "--label-column",
        "label",
        "--semi-supervised",
    ]
    err = refusal(capsys, argv + QUICK)
    assert "too few labelled rows to calibrate" in err and "9 labelled normal and 0 unlabelled" in err


def test_semi_supervised_needs_a_label_column(tiny_dataset, tmp_path, capsys):
    argv = ["train", str(tiny_dataset.csv_path), "--out", str(tmp_path / "m.onnx"), "--semi-supervised"]
    assert "needs --label-column" in refusal(capsys, argv)


def test_empty_labels_load_as_unknown_only_when_allowed(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,y\n1,2,1\n3,4,\n5,6,0\n7,8,\n")
    assert load_dataset(path, label_column="y", allow_unlabelled=True).labels.tolist() == [1, -1, 0, -1]
    with pytest.raises(DataError, match="empty in 2 of 4 row"):
        load_dataset(path, label_column="y")
    np.savez(tmp_path / "d.npz", X=np.ones((3, 2)), y=np.array([1.0, np.nan, 0.0]))
    assert load_dataset(tmp_path / "d.npz", allow_unlabelled=True).labels.tolist() == [1, -1, 0]
    with pytest.raises(DataError, match="give --semi-supervised"):
        load_dataset(tmp_path / "d.npz")


def test_semi_splits_keep_labelled_anomalies_out_of_calibration():
    rng = np.random.default_rng(0)
    labels = np.full(1000, UNLABELLED, dtype=np.int8)
    labels[rng.choice(1000, 12, replace=False)] = 1
    s = make_semi_splits(labels, seed=3)
    parts = [s.splits.train, s.splits.validation, s.splits.calibration, s.splits.evaluation]
    assert sum(len(p) for p in parts) <= 1000 and len(np.unique(np.concatenate(parts))) == sum(
        map(len, parts)
    )
    # No labelled normal rows: thresholds come from unlabelled rows, and no labelled anomaly is among them.
    assert (labels[s.splits.calibration] == UNLABELLED).all() and len(s.splits.calibration) == 148
    assert s.calibrated_on.startswith("held-out unlabelled rows")
    # 12 labelled anomalies: a quarter is held out, the rest train the head (never the autoencoder).
    assert len(s.train_positive) == 9 and (labels[s.pretrain] != 1).all()
    assert np.isin(s.train_positive, s.splits.train).all()
    assert np.array_equal(make_semi_splits(labels, seed=3).splits.train, s.splits.train)


def test_reconstruction_evidence_and_the_positive_score():
    normal = np.linspace(0, 1, 101)
    assert reconstruction_evidence(normal, np.array([2.0])) == 1.0
    assert reconstruction_evidence(normal, np.array([0.3])) == 0.0
    assert reconstruction_evidence(normal, np.array([0.7])) == pytest.approx(0.5, abs=0.02)
    logit = torch.tensor([-200.0, -60.0, -20.0, 0.0, 5.0, 60.0])
    score = positive_softplus(logit)
    np.testing.assert_allclose(score[2:].numpy(), torch.nn.functional.softplus(logit[2:]).numpy(), rtol=1e-6)
    # Ordered far into the normal tail, where log(1 + exp(x)) would round to 0 and tie.
    assert score[1] > 0 and score[1] < score[2] and score[0] >= 0
