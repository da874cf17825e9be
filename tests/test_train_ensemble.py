"""Ensembles: several networks fitted on the same rows, their scores averaged in the one ONNX graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.cli import main
from service.errors import InvalidInputError
from service.scorer import Scorer
from training import defaults
from training.api import TrainOptions, graph_scores, train_model
from training.export.onnx import check_parity, to_onnx
from training.fitting.fit import FitConfig, member_configs
from training.models.ae import ACTIVATIONS, Autoencoder, ScoringGraph


def test_one_member_per_activation_each_with_its_own_seed() -> None:
    members = member_configs(FitConfig(activation="elu, tanh,elu", seed=4))
    assert [(m.activation, m.seed) for m in members] == [("elu", 4), ("tanh", 5), ("elu", 6)]
    assert member_configs(FitConfig(activation="gelu", seed=1)) == [FitConfig(activation="gelu", seed=1)]


def test_member_coding_sizes_and_step_shares_go_to_their_members() -> None:
    config = FitConfig(
        activation="tanh,gelu,tanh", coding_size=3, member_coding_sizes=(3, 6, 3), max_steps=3000
    )
    members = member_configs(config)
    assert [(m.activation, m.coding_size, m.member_coding_sizes, m.max_steps) for m in members] == [
        ("tanh", 3, None, 1000),  # the step budget is the whole fit's, shared equally
        ("gelu", 6, None, 1000),
        ("tanh", 3, None, 1000),
    ]
    with pytest.raises(ValueError, match="2 member coding sizes for 3 activations"):
        member_configs(FitConfig(activation="tanh,gelu,tanh", member_coding_sizes=(3, 6)))


def test_derived_member_coding_sizes_alternate_k_and_2k_below_d() -> None:
    assert defaults.member_coding_sizes(12, 2) == (3, 6)  # k = round(sqrt(12)) = 3
    assert defaults.member_coding_sizes(36, 3) == (6, 12, 6)
    assert defaults.member_coding_sizes(3, 2) == (2, 2)  # 2k = 4 is capped at d - 1
    assert defaults.member_coding_sizes(100, 1) == (10,)


def test_derived_coding_sizes_differ_by_member_and_an_explicit_one_applies_to_all(tiny_dataset) -> None:
    def architecture(**fit: object) -> dict:
        options = TrainOptions(fit=FitConfig(activation="tanh,gelu", max_epochs=3, **fit))  # type: ignore[arg-type]
        result = train_model(tiny_dataset.X, tiny_dataset.feature_names, None, options=options)
        codes = result.graph(torch.from_numpy(tiny_dataset.X[:4]))[2]
        assert codes.shape == (4, result.metadata.coding_size)  # the first member's codings
        return result.metadata.architecture

    derived = architecture()  # d = 8: k = round(sqrt(8)) = 3
    assert [sizes[-1] for sizes in derived["member_layer_sizes"]] == [3, 6]
    assert derived["coding_size"] == 3 and derived["undercomplete"] is True
    explicit = architecture(coding_size=2)
    assert [sizes[-1] for sizes in explicit["member_layer_sizes"]] == [2, 2]


def test_an_overcomplete_member_is_refused(tiny_dataset) -> None:
    options = TrainOptions(fit=FitConfig(activation="tanh,gelu", member_coding_sizes=(3, 8)))
    with pytest.raises(InvalidInputError, match="coding size 8 is not smaller than the 8 input"):
        train_model(tiny_dataset.X, tiny_dataset.feature_names, None, options=options)


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
    np.testing.assert_allclose(served, graph_scores(result.graph, tiny_dataset.X), rtol=1e-4, atol=1e-4)
    assert 0.5 < float(np.median(served[tiny_dataset.y == 0])) < 2.0  # whitened: about 1 on normal rows
    assert meta.evaluation["roc_auc"] > 0.9


def test_cli_refuses_an_unknown_activation(tiny_dataset, tmp_path, capsys) -> None:
    argv = ["train", str(tiny_dataset.csv_path), "--out", str(tmp_path / "m.onnx"), "--no-progress"]
    assert main([*argv, "--activation", "elu,swish"]) == 2
    assert "'swish'" in capsys.readouterr().err
