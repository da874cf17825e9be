"""Cross-fitting: no row that sets or evaluates a threshold trained the networks that scored it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.cli import main
from service.errors import DataError
from service.scorer import Scorer
from training.api import TrainOptions, build_graph, graph_scores, set_threads, train_model
from training.data.folds import plan_crossfit
from training.fitting.crossfit import crossfit
from training.fitting.fit import FitConfig
from training.registry import ARCHITECTURES

#: Small and quick: the tests check where rows go, not how well the networks learn.
QUICK = FitConfig(hidden=[16], coding_size=3, member_coding_sizes=None, max_epochs=8, activation="tanh,gelu")


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_plan_keeps_every_scored_row_out_of_its_fold_networks(folds: int) -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(503) < 0.1).astype(np.int8)
    plan = plan_crossfit(len(labels), labels, seed=4, folds=folds, tune_anomalies=True)
    normal, anomalies = set(np.flatnonzero(labels == 0)), set(np.flatnonzero(labels == 1))
    scored = [set(f.scored.tolist()) for f in plan.folds]
    for fold, rows in zip(plan.folds, scored, strict=True):
        fitted = set(fold.train.tolist()) | set(fold.validation.tolist())
        assert not fitted & rows  # the heart of it: a fold's networks never see the rows they score
        assert fitted <= normal  # anomalies train nothing
        assert fitted | rows >= normal  # ... and every other normal row trains the fold
    assert sum(len(r) for r in scored) == len(labels)  # each row scored exactly once
    assert set().union(*scored) == normal | anomalies
    sp = plan.splits
    # The final (served) fit sees every normal row.
    assert set(sp.train.tolist()) | set(sp.validation.tolist()) == normal
    assert not set(sp.train.tolist()) & set(sp.validation.tolist())
    assert set(sp.calibration.tolist()) <= normal
    assert not set(sp.calibration.tolist()) & set(sp.evaluation.tolist())  # thresholds set on other rows
    assert set(sp.tuning.tolist()) - set(sp.calibration.tolist()) <= anomalies
    assert set(sp.evaluation.tolist()) | set(sp.tuning.tolist()) == normal | anomalies


def test_plan_is_seeded_and_refuses_too_few_rows() -> None:
    a = plan_crossfit(100, None, seed=1, folds=2)
    assert np.array_equal(a.folds[0].scored, plan_crossfit(100, None, seed=1, folds=2).folds[0].scored)
    assert not np.array_equal(a.folds[0].scored, plan_crossfit(100, None, seed=2, folds=2).folds[0].scored)
    with pytest.raises(DataError, match="at least 10 normal rows"):
        plan_crossfit(30, np.r_[np.zeros(9), np.ones(21)].astype(np.int8), seed=0, folds=2)


def test_each_row_is_scored_by_networks_fitted_on_other_rows(tiny_dataset) -> None:
    x, y = tiny_dataset.X, tiny_dataset.y
    plan = plan_crossfit(len(y), y, seed=0, folds=3)
    config = QUICK
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def score(fits: list, rows: np.ndarray) -> np.ndarray:
        # The scaler is fitted on a network's training rows: it tells which rows those were.
        seen.append((fits[0].mean, rows))
        return graph_scores(build_graph(fits), rows)

    set_threads()  # as train_model does: one torch thread
    result = crossfit(x, plan, config, score, build=ARCHITECTURES["ae"].build)
    assert len(seen) == 3
    for (mean, rows), fold in zip(seen, plan.folds, strict=True):
        assert np.array_equal(rows, x[fold.scored])
        np.testing.assert_allclose(mean, x[fold.train].mean(axis=0), rtol=1e-5, atol=1e-5)
    assert np.isfinite(result.scores).all()
    # The served networks are another fit (on all normal rows): their scores are not the out-of-fold ones.
    final = graph_scores(build_graph(result.final), x)
    assert not np.allclose(final, result.scores)


def test_cross_fitted_model_calibrates_on_out_of_fold_scores(tiny_dataset, tmp_path: Path) -> None:
    x, y = tiny_dataset.X, tiny_dataset.y
    options = TrainOptions(fit=QUICK, thresholds=("warning=q0.9",), crossfit_folds=2)
    result = train_model(x, tiny_dataset.feature_names, tmp_path / "m.onnx", labels=y, options=options)
    meta = result.metadata
    info = meta.training["crossfit"]
    assert info["folds"] == 2 and len(info["fold_member_epochs"]) == 2
    n_normal = int((y == 0).sum())
    assert info["final_train_rows"] + info["final_validation_rows"] == n_normal
    cal = result.scores[result.splits.calibration]
    assert meta.thresholds[0].value == pytest.approx(float(np.quantile(cal, 0.9, method="higher")))
    # The exported artifact keeps its contract: service.scorer loads it and gives the final graph's scores.
    scored = Scorer.load(result.path).score(x[:50]).score
    np.testing.assert_allclose(scored, graph_scores(result.graph, x[:50]), rtol=1e-4, atol=1e-4)
    assert meta.evaluation["roc_auc"] > 0.8  # the anomalies break the correlations: any fit finds them


def test_zero_folds_keeps_the_plain_split(tiny_dataset) -> None:
    x, y = tiny_dataset.X, tiny_dataset.y
    options = TrainOptions(fit=QUICK, crossfit_folds=0)
    result = train_model(x, tiny_dataset.feature_names, None, labels=y, options=options)
    assert result.metadata.training["crossfit"] is None
    assert result.metadata.training["split_rows"]["train"] == round(0.6 * int((y == 0).sum()))


def test_train_summary_and_inspect_say_the_model_was_cross_fitted(tiny_dataset, tmp_path, capsys) -> None:
    model = tmp_path / "m.onnx"
    argv = ["train", str(tiny_dataset.csv_path), "--out", str(model), "--label-column", "label"]
    argv += [
        "--hidden",
        "16",
        "--coding-size",
        "2",
        "--max-epochs",
        "8",
        "--no-progress",
        "--crossfit-folds",
        "3",
    ]
    assert main(argv) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("cross-fit ")]
    assert "3 folds: thresholds and evaluation from out-of-fold scores" in line
    assert main(["inspect", str(model)]) == 0
    shown = capsys.readouterr().out
    assert "cross-fit      3 folds" in shown and "served networks trained on 540 rows" in shown


def test_one_fold_is_refused_in_one_line(tiny_dataset, tmp_path, capsys) -> None:
    argv = ["train", str(tiny_dataset.csv_path), "--out", str(tmp_path / "m.onnx"), "--crossfit-folds", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("aeguard: error:") and "--crossfit-folds must be 0 (off) or >= 2" in err
    assert len(err.strip().splitlines()) == 1
