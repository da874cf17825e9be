"""The training pipeline: undercomplete refusal, tied weights, determinism, splits, constant columns."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from service.errors import DataError, InvalidInputError
from service.scorer import Scorer
from training.api import TrainOptions, graph_scores, train_model
from training.data.splits import make_splits
from training.export.onnx import ExportError, check_parity, to_onnx
from training.fitting.fit import FitConfig
from training.models.ae import Autoencoder, ScoringGraph


def quick(**fit) -> TrainOptions:
    base = {"hidden": [16], "coding_size": 2, "max_epochs": 12, "patience": 4, "seed": 0}
    return TrainOptions(name="t", fit=FitConfig(**{**base, **fit}))


def test_tied_weights_halve_the_weight_count():
    untied = Autoencoder(10, [6], 3)
    tied = Autoencoder(10, [6], 3, tied_weights=True)
    assert untied.weight_count() == 2 * (10 * 6 + 6 * 3)
    assert tied.weight_count() * 2 == untied.weight_count()
    # the decoder's output layer reads the encoder's first weight, transposed
    tied.encoder[0].weight.data.fill_(0.5)
    codes = torch.zeros(1, 3)
    hidden = tied.act(torch.nn.functional.linear(codes, tied.encoder[1].weight.t(), tied.decoder_bias[0]))
    expected = hidden @ tied.encoder[0].weight + tied.decoder_bias[1]
    torch.testing.assert_close(tied.decode(codes), expected)


def test_overcomplete_is_refused_unless_allowed(tiny_dataset, caplog):
    with pytest.raises(InvalidInputError, match=r"coding size 8 .* 8 input.*--allow-overcomplete"):
        train_model(tiny_dataset.normal, tiny_dataset.feature_names, None, options=quick(coding_size=8))
    options = quick(coding_size=9, max_epochs=2)
    options = TrainOptions(name="t", fit=options.fit, allow_overcomplete=True)
    with caplog.at_level(logging.WARNING):
        result = train_model(tiny_dataset.normal, tiny_dataset.feature_names, None, options=options)
    assert result.metadata.architecture["undercomplete"] is False
    assert any("allow-overcomplete" in r.getMessage() for r in caplog.records)


def test_same_seed_same_scores_other_seed_differs(tiny_dataset):
    a = train_model(tiny_dataset.X, tiny_dataset.feature_names, None, labels=tiny_dataset.y, options=quick())
    b = train_model(tiny_dataset.X, tiny_dataset.feature_names, None, labels=tiny_dataset.y, options=quick())
    c = train_model(
        tiny_dataset.X, tiny_dataset.feature_names, None, labels=tiny_dataset.y, options=quick(seed=1)
    )
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.metadata.version == b.metadata.version
    assert a.metadata.training["fingerprint_sha256"] == b.metadata.training["fingerprint_sha256"]
    assert not np.array_equal(a.scores, c.scores)


def test_tied_and_denoising_models_train_and_export(tiny_dataset, tmp_path):
    options = quick(tied_weights=True, denoise_sigma=0.1)
    result = train_model(
        tiny_dataset.X,
        tiny_dataset.feature_names,
        tmp_path / "m.onnx",
        labels=tiny_dataset.y,
        options=options,
    )
    meta = Scorer.load(result.path).metadata
    assert meta.architecture["tied_weights"] is True and meta.architecture["denoise_sigma"] == 0.1
    # encoder only, in each network of the default ensemble
    assert meta.architecture["weight_count"] == meta.architecture["members"] * (8 * 16 + 16 * 2)
    scorer = Scorer.load(result.path)
    np.testing.assert_allclose(
        scorer.score(tiny_dataset.X).score, graph_scores(result.graph, tiny_dataset.X), rtol=1e-4, atol=1e-6
    )


def test_constant_columns_give_finite_scores(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 4))
    x[:, 1] = 7.0  # constant
    x[:, 3] = 0.0  # constant zero
    result = train_model(x, ["a", "b", "c", "d"], tmp_path / "c.onnx", options=quick())
    scorer = Scorer.load(result.path)
    batch = scorer.score(x.astype(np.float32), with_feature_errors=True)
    assert np.isfinite(batch.score).all() and np.isfinite(batch.feature_errors).all()
    assert np.isfinite(scorer.reconstruct(x.astype(np.float32))).all()
    assert all(np.isfinite(v) for v in result.metadata.score_distribution.values)


def test_splits_are_seeded_disjoint_and_novelty():
    labels = np.array([0] * 90 + [1] * 10)
    s = make_splits(100, labels, seed=3, tune_anomalies=True)
    parts = [s.train, s.validation, s.calibration, s.evaluation]
    assert sum(len(p) for p in parts) == 100 - 5  # 5 anomalies went to tuning
    assert len(np.unique(np.concatenate(parts))) == 95
    assert labels[s.train].sum() == 0 and labels[s.validation].sum() == 0 and labels[s.calibration].sum() == 0
    assert labels[s.tuning].sum() == 5 and labels[s.evaluation].sum() == 5
    again = make_splits(100, labels, seed=3, tune_anomalies=True)
    np.testing.assert_array_equal(s.train, again.train)
    contaminated = make_splits(100, labels, seed=3, contaminated=True)
    assert labels[contaminated.train].sum() > 0


def test_too_few_normal_rows_is_refused():
    with pytest.raises(DataError, match=r"at least 10 normal rows .* got 3 \(of 5 row"):
        make_splits(5, np.array([0, 0, 0, 1, 1]), seed=0)


def test_f1_threshold_and_evaluation(tiny_dataset):
    options = TrainOptions(name="t", fit=quick().fit, thresholds=("warn=q0.95", "best=f1"))
    result = train_model(
        tiny_dataset.X, tiny_dataset.feature_names, None, labels=tiny_dataset.y, options=options
    )
    best = next(t for t in result.metadata.thresholds if t.name == "best")
    assert best.method == "f1" and 0 < best.param <= 1
    ev = result.metadata.evaluation
    assert ev["roc_auc"] > 0.85 and 0 < ev["pr_auc"] <= 1
    for name in ("warn", "best"):
        assert {"precision", "recall", "f1"} <= set(ev["thresholds"][name])
    # tuning anomalies are not in the evaluation split
    assert not set(result.splits.tuning) & set(result.splits.evaluation)


def test_identity_check_flags_a_model_that_copies(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 6))  # independent features: nothing to learn but copying
    options = TrainOptions(
        name="copy",
        fit=FitConfig(hidden=[32], coding_size=12, max_epochs=30, seed=0),
        allow_overcomplete=True,
    )
    result = train_model(x, [f"c{i}" for i in range(6)], None, options=options)
    assert result.metadata.evaluation["identity_check"]["copying"] is True


def test_identity_check_passes_on_structured_data(tiny_model_path):
    ident = Scorer.load(tiny_model_path).metadata.evaluation["identity_check"]
    assert ident["copying"] is False and ident["shuffled_ratio"] > 2


def test_parity_check_catches_a_graph_that_disagrees():
    graph = ScoringGraph(Autoencoder(4, [4], 2), torch.zeros(4), torch.ones(4)).eval()
    proto = to_onnx(graph, 4)
    batch = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    report = check_parity(graph, proto, batch)
    assert report["parity_max_abs_diff"] < 1e-5 and report["parity_rows"] == 16
    assert 0 <= report["parity_worst_fraction_of_tolerance"] < 1
    with torch.no_grad():
        graph.autoencoder.encoder_weight(0).add_(0.1)  # torch changes, the exported graph does not
    with pytest.raises(ExportError, match="disagree"):
        check_parity(graph, proto, batch)
