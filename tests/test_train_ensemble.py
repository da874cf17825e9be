"""Ensembles: several networks fitted on the same rows, their scores averaged in the one ONNX graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.cli import main
from service.scorer import Scorer
from training import defaults
from training.api import TrainOptions, train_model
from training.export import check_parity, to_onnx
from training.fit import FitConfig, member_configs
from training.model import ACTIVATIONS, Autoencoder, ScoringGraph


def test_one_member_per_activation_each_with_its_own_seed() -> None:
    members = member_configs(FitConfig(activation="elu, tanh,elu", seed=4))
    assert [(m.activation, m.seed) for m in members] == [("elu", 4), ("tanh", 5), ("elu", 6)]
    assert member_configs(FitConfig(activation="gelu", seed=1)) == [FitConfig(activation="gelu", seed=1)]


def test_the_activation_names_the_cli_accepts_are_the_model_s() -> None:
    assert set(defaults.ACTIVATION_NAMES) == set(ACTIVATIONS)
    assert all(a.strip() in ACTIVATIONS for a in defaults.ACTIVATION.split(","))


def test_ensemble_graph_averages_its_members_and_exports_exactly() -> None:
    torch.manual_seed(0)
    first, second = Autoencoder(5, [8], 2, activation="elu"), Autoencoder(5, [8], 2, activation="tanh")
    mean, scale = torch.linspace(-1, 1, 5), torch.linspace(0.5, 2, 5)
    w1, w2 = torch.eye(5) * 2, torch.diag(torch.linspace(0.5, 1.5, 5))
    ensemble = ScoringGraph([first, second], mean, scale, [w1, w2]).eval()
    alone = [ScoringGraph(m, mean, scale, w).eval() for m, w in ((first, w1), (second, w2))]
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(32, 5)).astype(np.float32))
    with torch.no_grad():
        score, feature_errors, codes, rec = ensemble(x)
        parts = [graph(x) for graph in alone]
    torch.testing.assert_close(score, (parts[0][0] + parts[1][0]) / 2)
    torch.testing.assert_close(feature_errors, (parts[0][1] + parts[1][1]) / 2)
    torch.testing.assert_close(codes, parts[0][2])  # the first member's codings
    torch.testing.assert_close(rec, (parts[0][3] + parts[1][3]) / 2)
    report = check_parity(ensemble, to_onnx(ensemble, 5), x.numpy())
    assert report["parity_worst_fraction_of_tolerance"] < 1


def test_ensemble_graph_refuses_mismatched_whitening() -> None:
    with pytest.raises(ValueError, match="2 whitening matrices for 1"):
        ScoringGraph([Autoencoder(3, [4], 1)], torch.zeros(3), torch.ones(3), [torch.eye(3), torch.eye(3)])


def test_a_trained_ensemble_is_served_like_one_model(tiny_dataset, tmp_path) -> None:
    options = TrainOptions(fit=FitConfig(activation="elu,tanh", max_epochs=20, seed=3), name="ens")
    result = train_model(
        tiny_dataset.X,
        tiny_dataset.feature_names,
        tmp_path / "ens.onnx",
        labels=tiny_dataset.y,
        options=options,
    )
    meta = result.metadata
    assert meta.architecture["members"] == 2 and meta.architecture["activation"] == "elu,tanh"
    assert len(meta.training["member_epochs_run"]) == 2
    assert "averaged over 2 networks" in meta.architecture["score"]
    scorer = Scorer.load(tmp_path / "ens.onnx")
    served = scorer.score(tiny_dataset.X).score
    np.testing.assert_allclose(served, result.scores, rtol=1e-4, atol=1e-4)
    assert 0.5 < float(np.median(served[tiny_dataset.y == 0])) < 2.0  # whitened: about 1 on normal rows
    assert meta.evaluation["roc_auc"] > 0.9


def test_cli_refuses_an_unknown_activation(tiny_dataset, tmp_path, capsys) -> None:
    argv = ["train", str(tiny_dataset.csv_path), "--out", str(tmp_path / "m.onnx"), "--no-progress"]
    assert main([*argv, "--activation", "elu,swish"]) == 2
    assert "'swish'" in capsys.readouterr().err
