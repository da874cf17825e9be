"""The detection-quality defaults: whitened residuals and the step budget behave as documented."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from training import defaults
from training.fitting.fit import FitConfig, error_whitening, fit_autoencoder
from training.models.ae import Autoencoder, ScoringGraph
from training.registry import ARCHITECTURES


def test_whitening_matrix_is_the_inverse_square_root_of_the_residual_covariance() -> None:
    rng = np.random.default_rng(0)
    mixing = np.array([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.5, 0.5]])
    residuals = rng.normal(size=(20_000, 3)) @ mixing.T
    w = error_whitening(residuals).astype(np.float64)
    np.testing.assert_allclose(w, w.T, atol=1e-6)  # symmetric (ZCA): coordinate j stays feature j
    shrunk = LedoitWolf(assume_centered=True).fit(residuals).covariance_
    np.testing.assert_allclose(w @ shrunk @ w, np.eye(3), atol=1e-4)
    # With this many rows the shrinkage is small: whitened residuals have about unit covariance.
    np.testing.assert_allclose(np.cov((residuals @ w).T, bias=True), np.eye(3), atol=0.05)


def test_whitening_survives_a_degenerate_residual() -> None:
    residuals = np.zeros((50, 4))
    residuals[:, 0] = np.random.default_rng(1).normal(size=50)  # three directions never err
    w = error_whitening(residuals)
    assert np.isfinite(w).all()
    assert np.linalg.eigvalsh(w.astype(np.float64)).max() <= 1.01 / np.sqrt(defaults.WHITENING_EIGEN_FLOOR)


def test_whitened_score_is_about_one_on_normal_rows_and_large_off_the_pattern() -> None:
    rng = np.random.default_rng(2)
    latent = rng.normal(size=(3000, 2))
    x = np.hstack([latent, latent @ np.array([[1.0, 0.5], [0.3, -1.0]]), 0.1 * rng.normal(size=(3000, 2))])
    x = x.astype(np.float32)
    config = FitConfig(hidden=[16], coding_size=2, max_epochs=40, seed=0, activation="elu")
    fitted = fit_autoencoder(x[:2000], x[2000:2500], config, build=ARCHITECTURES[config.architecture].build)
    assert fitted.error_whitening is not None and fitted.error_whitening.shape == (6, 6)
    graph = ScoringGraph(
        fitted.model,
        torch.from_numpy(fitted.mean),
        torch.from_numpy(fitted.scale),
        torch.from_numpy(fitted.error_whitening),
    ).eval()
    held_out = torch.from_numpy(x[2500:])
    broken = held_out.clone()
    broken[:, 2] = -broken[:, 2]  # the third feature no longer follows the first two
    with torch.no_grad():
        normal_score, normal_fe, _, _ = graph(held_out)
        broken_score = graph(broken)[0]
    assert 0.5 < float(normal_score.mean()) < 2.0  # Mahalanobis distance / d of normal residuals
    torch.testing.assert_close(normal_score, normal_fe.mean(dim=1))  # score = mean of feature errors
    assert float(broken_score.median()) > 5 * float(normal_score.median())


def test_plain_squared_error_when_whitening_is_off() -> None:
    x = np.random.default_rng(3).normal(size=(300, 5)).astype(np.float32)
    fitted = fit_autoencoder(
        x[:200],
        x[200:],
        FitConfig(hidden=[8], coding_size=2, max_epochs=3, whiten_errors=False, activation="elu"),
        build=ARCHITECTURES["ae"].build,
    )
    assert fitted.error_whitening is None
    graph = ScoringGraph(Autoencoder(5, [8], 2), torch.zeros(5), torch.ones(5)).eval()
    z = torch.from_numpy(x[:10])
    with torch.no_grad():
        score = graph(z)[0]
        expected = ((graph.autoencoder(z) - z) ** 2).mean(dim=1)
    torch.testing.assert_close(score, expected)


def test_step_budget_ends_training_of_large_sets_early() -> None:
    x = np.random.default_rng(4).normal(size=(2600, 4)).astype(np.float32)
    config = FitConfig(
        hidden=[8],
        coding_size=2,
        max_epochs=50,
        patience=50,
        min_epochs=1,
        batch_size=100,
        max_steps=60,
        activation="elu",
    )
    fitted = fit_autoencoder(x[:2500], x[2500:], config, build=ARCHITECTURES[config.architecture].build)
    assert len(fitted.train_loss) == 3  # 25 steps an epoch: the budget of 60 ends it after epoch 3
