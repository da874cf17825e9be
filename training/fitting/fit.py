"""The fit loop: standardisation, minibatch training with early stopping, deterministic by seed."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from training import defaults
from training.models.ae import Autoencoder

log = logging.getLogger(__name__)

#: Called after every epoch with ``(epoch, train_loss, validation_loss, best_epoch)``.
EpochCallback = Callable[[int, float, float, int], None]


@dataclass(frozen=True)
class FitConfig:
    """Hyper-parameters of one fit.

    Attributes
    ----------
    hidden : list of int or None
        Encoder hidden sizes; ``None`` derives them from the number of features.
    coding_size : int or None
        Coding width (of the first member, whose codings are the model's ``codes``); ``None``
        derives it from the number of features.
    member_coding_sizes : tuple of int or None
        One coding width per ensemble member; ``None`` = ``coding_size`` for every member. When
        ``coding_size`` is derived, so are these (see :func:`training.defaults.member_coding_sizes`).
    tied_weights : bool
        Decoder weights are the encoder's, transposed.
    denoise_sigma : float
        Standard deviation of Gaussian noise added to the (scaled) inputs while training; 0 = off.
    max_epochs, patience, min_epochs : int
        Early stopping: stop after ``patience`` epochs without validation improvement.
    max_steps : int or None
        Budget of optimiser steps of the whole fit: training also ends after the epoch that
        reaches it (but not before ``min_epochs``), so large data sets train in bounded time. An
        ensemble's members share it equally (:func:`member_configs`). ``None`` = no budget.
    batch_size : int
        Minibatch size.
    lr : float
        Adam learning rate.
    weight_decay : float
        Adam weight decay.
    activation : str
        Hidden-layer activation (``relu``, ``elu``, ``tanh``, ``gelu``). A comma-separated list
        (``"elu,tanh"``) fits one network per entry on the same rows, an ensemble whose scores
        are averaged in the one scoring graph (see :func:`fit_ensemble`).
    whiten_errors : bool
        Score the residual's Mahalanobis distance instead of its plain squared error (see
        :func:`error_whitening`).
    seed : int
        Seeds the weight initialisation, the batch order and the noise.
    architecture : str
        The network's name in :data:`training.registry.ARCHITECTURES` (``ae``, ``vae``, ...).
    kl_weight, kl_warmup_epochs : float, int
        VAE only: weight of the KL term and the epochs over which it warms up from 0; early
        stopping waits for the warm-up to end.
    """

    hidden: list[int] | None = None
    coding_size: int | None = None
    member_coding_sizes: tuple[int, ...] | None = None
    tied_weights: bool = False
    denoise_sigma: float = 0.0
    max_epochs: int = defaults.MAX_EPOCHS
    patience: int = defaults.PATIENCE
    min_epochs: int = defaults.MIN_EPOCHS
    batch_size: int = defaults.BATCH_SIZE
    lr: float = defaults.LEARNING_RATE
    weight_decay: float = defaults.WEIGHT_DECAY
    activation: str = defaults.ACTIVATION
    max_steps: int | None = defaults.MAX_STEPS
    whiten_errors: bool = defaults.WHITEN_ERRORS
    seed: int = defaults.SEED
    architecture: str = defaults.ARCHITECTURE
    kl_weight: float = defaults.KL_WEIGHT
    kl_warmup_epochs: int = defaults.KL_WARMUP_EPOCHS


#: Builds an untrained network for samples of one shape (``(d,)`` for rows) from resolved settings
#: (an architecture's ``build`` in :data:`training.registry.ARCHITECTURES`).
NetworkBuilder = Callable[[tuple[int, ...], FitConfig], Autoencoder]


@dataclass
class FitResult:
    """The fitted network, its scaler and the learning curves."""

    model: Autoencoder
    mean: np.ndarray
    scale: np.ndarray
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    #: ``[d, d]`` residual whitening for the scoring graph; ``None`` = plain squared error.
    error_whitening: np.ndarray | None = None


def fit_scaler(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale of ``x``; constant columns get scale 1 (never NaN or Inf).

    Parameters
    ----------
    x : numpy.ndarray
        Training rows ``[n, d]``.

    Returns
    -------
    mean, scale : numpy.ndarray
        float32 vectors of length ``d``.
    """
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=0)
    std = x64.std(axis=0)
    tiny = defaults.CONSTANT_STD * max(1.0, float(np.abs(mean).max(initial=0.0)))
    scale = np.where(std > tiny, std, 1.0)
    return mean.astype(np.float32), scale.astype(np.float32)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and return a generator for batch order and noise."""
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def _loss(model: Autoencoder, z: torch.Tensor, batch_size: int) -> float:
    total = 0.0
    with torch.no_grad():
        for start in range(0, z.shape[0], max(batch_size, 4096)):
            total += model.validation_loss_sum(z[start : start + max(batch_size, 4096)])
    return total / max(1, z.shape[0])


def error_whitening(residuals: np.ndarray) -> np.ndarray:
    """Symmetric inverse square root of the residuals' covariance (ZCA whitening matrix).

    The covariance is the Ledoit-Wolf shrinkage estimate around zero (residuals of a fitted
    autoencoder are centred), which stays well-conditioned with few rows; eigenvalues below
    :data:`training.defaults.WHITENING_EIGEN_FLOOR` times the largest are raised to it.
    Reconstruction errors then count in units of how much normal rows err, per direction: a
    feature the model always reconstructs poorly no longer dominates the score, and an error
    that breaks the usual pattern between features counts more.

    Parameters
    ----------
    residuals : numpy.ndarray
        ``reconstruction - input`` in scaled space, ``[n, d]``, on normal rows.

    Returns
    -------
    numpy.ndarray
        float32 ``[d, d]`` matrix ``W`` with ``W @ W = inverse covariance``.
    """
    from sklearn.covariance import LedoitWolf

    cov = LedoitWolf(assume_centered=True).fit(residuals.astype(np.float64)).covariance_
    eigval, eigvec = np.linalg.eigh(cov)
    eigval = np.maximum(eigval, defaults.WHITENING_EIGEN_FLOOR * max(float(eigval.max()), 1e-12))
    return ((eigvec / np.sqrt(eigval)) @ eigvec.T).astype(np.float32)


def _residuals(model: Autoencoder, z: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return (model(z) - z).numpy()


def fit_autoencoder(
    x_train: np.ndarray,
    x_val: np.ndarray,
    config: FitConfig,
    *,
    build: NetworkBuilder,
    on_epoch: EpochCallback | None = None,
) -> FitResult:
    """Fit an autoencoder on ``x_train``, stopping early on the loss over ``x_val``.

    Parameters
    ----------
    x_train, x_val : numpy.ndarray
        Raw samples ``[n, *sample_shape]`` (float32; rows ``[n, d]`` for a row-wise network); the
        scaler is fitted on ``x_train``.
    config : FitConfig
        Hyper-parameters; ``hidden`` and ``coding_size`` must be resolved (not ``None``).
    build : callable
        Makes the untrained network (the architecture's ``build``, :mod:`training.registry`).
    on_epoch : callable, optional
        Progress hook, called once per epoch.

    Returns
    -------
    FitResult
        The network restored to its best validation epoch.
    """
    if config.hidden is None or config.coding_size is None:
        raise ValueError("resolve hidden and coding_size before fitting")
    if "," in config.activation:
        raise ValueError(f"one network, one activation: fit {config.activation!r} with fit_ensemble")
    gen = seed_everything(config.seed)
    mean, scale = fit_scaler(x_train)
    z_train = torch.from_numpy((x_train - mean) / scale).float()
    z_val = torch.from_numpy((x_val - mean) / scale).float()
    model = build(tuple(x_train.shape[1:]), config)
    # fused: one kernel per step instead of a Python loop over parameters (~10 % less CPU on small nets).
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    result = FitResult(model=model, mean=mean, scale=scale)
    best = math.inf
    best_state = copy.deepcopy(model.state_dict())
    n = z_train.shape[0]
    bs = max(1, min(config.batch_size, n))
    max_epochs = config.max_epochs
    if config.max_steps is not None:
        budget_epochs = math.ceil(config.max_steps / math.ceil(n / bs))
        max_epochs = min(max_epochs, max(config.min_epochs, budget_epochs))
    for epoch in range(1, max_epochs + 1):
        train_loss = _train_epoch(model, opt, z_train, bs, epoch, config.denoise_sigma, gen)
        val_loss = _loss(model, z_val, bs)
        result.train_loss.append(train_loss)
        result.validation_loss.append(val_loss)
        if val_loss < best * (1 - defaults.MIN_DELTA) or epoch == 1:
            best = val_loss
            result.best_epoch = epoch
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch is not None:
            on_epoch(epoch, train_loss, val_loss, result.best_epoch)
        may_stop = epoch >= config.min_epochs and epoch >= model.min_stop_epoch()
        if epoch - result.best_epoch >= config.patience and may_stop:
            result.stopped_early = True
            break
    model.load_state_dict(best_state)
    model.eval()
    if config.whiten_errors:
        # Training and validation rows together: more rows for a d x d estimate; both are normal data.
        result.error_whitening = error_whitening(
            np.vstack([_residuals(model, z_train), _residuals(model, z_val)])
        )
    log.debug("best epoch %s of %s, validation loss %.6g", result.best_epoch, len(result.train_loss), best)
    return result


def _train_epoch(
    model: Autoencoder,
    opt: torch.optim.Optimizer,
    z_train: torch.Tensor,
    batch_size: int,
    epoch: int,
    denoise_sigma: float,
    gen: torch.Generator,
) -> float:
    """One pass over the shuffled training rows; returns the mean training loss (model left in eval mode)."""
    model.train()
    n = z_train.shape[0]
    order = torch.randperm(n, generator=gen)
    running = 0.0
    for start in range(0, n, batch_size):
        zb = z_train[order[start : start + batch_size]]
        inputs = zb
        if denoise_sigma > 0:
            inputs = zb + denoise_sigma * torch.randn(zb.shape, generator=gen)
        loss = model.training_loss(inputs, zb, epoch, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        running += loss.item() * zb.shape[0]
    model.eval()
    return running / n


def member_configs(config: FitConfig) -> list[FitConfig]:
    """One config per ensemble member: member ``i`` gets the ``i``-th activation, seed ``seed + i``,
    the ``i``-th of ``member_coding_sizes`` when those are set (else ``coding_size``) and an equal
    share of ``max_steps``."""
    names = defaults.activation_list(config.activation)
    if not names:
        raise ValueError(f"no activation in {config.activation!r}")
    sizes = config.member_coding_sizes
    if sizes is not None and len(sizes) != len(names):
        raise ValueError(f"{len(sizes)} member coding sizes for {len(names)} activations")
    return [
        replace(
            config,
            activation=a,
            seed=config.seed + i,
            coding_size=config.coding_size if sizes is None else sizes[i],
            member_coding_sizes=None,
            max_steps=None if config.max_steps is None else math.ceil(config.max_steps / len(names)),
        )
        for i, a in enumerate(names)
    ]


def fit_ensemble(
    x_train: np.ndarray,
    x_val: np.ndarray,
    config: FitConfig,
    *,
    build: NetworkBuilder,
    on_epoch: EpochCallback | None = None,
) -> list[FitResult]:
    """Fit every member of :func:`member_configs` on the same rows, one after the other.

    Parameters
    ----------
    x_train, x_val : numpy.ndarray
        Raw rows ``[n, d]``; every member fits the same scaler on ``x_train``.
    config : FitConfig
        Resolved hyper-parameters (see :func:`fit_autoencoder`).
    build : callable
        Makes each untrained network (see :func:`fit_autoencoder`).
    on_epoch : callable, optional
        Progress hook; epochs count on across members (member 2's first epoch follows member 1's
        last), so one bar of ``max_epochs * members`` covers the whole fit.

    Returns
    -------
    list of FitResult
        One per member, in order; the first member's codings are the model's ``codes``.
    """
    fits: list[FitResult] = []
    done = 0
    for member in member_configs(config):
        hook = None
        if on_epoch is not None:
            hook = _offset_hook(on_epoch, done)
        fits.append(fit_autoencoder(x_train, x_val, member, build=build, on_epoch=hook))
        done += len(fits[-1].train_loss)
    return fits


def fit_summary(config: FitConfig, member_fits: list[FitResult]) -> dict[str, Any]:
    """How a fit went, for the model's ``training`` metadata: settings, epochs, losses per network.

    The top-level epoch and loss keys are the first network's; ``members`` describes every one
    (each network of an ensemble trains to its own early stop).
    """
    fitted = member_fits[0]
    return {
        "seed": config.seed,
        "hyperparameters": {
            "max_epochs": config.max_epochs,
            "patience": config.patience,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "weight_decay": config.weight_decay,
            "max_steps": config.max_steps,
        },
        "epochs_run": len(fitted.train_loss),
        "member_epochs_run": [len(f.train_loss) for f in member_fits],
        "members": [
            {
                "epochs_run": len(f.train_loss),
                "best_epoch": f.best_epoch,
                "stopped_early": f.stopped_early,
                "train_loss": f.train_loss[f.best_epoch - 1],
                "validation_loss": f.validation_loss[f.best_epoch - 1],
            }
            for f in member_fits
        ],
        "best_epoch": fitted.best_epoch,
        "stopped_early": fitted.stopped_early,
        "train_loss": fitted.train_loss[fitted.best_epoch - 1],
        "validation_loss": fitted.validation_loss[fitted.best_epoch - 1],
    }


def _offset_hook(on_epoch: EpochCallback, offset: int) -> EpochCallback:
    def hook(epoch: int, train_loss: float, validation_loss: float, best_epoch: int) -> None:
        on_epoch(offset + epoch, train_loss, validation_loss, offset + best_epoch)

    return hook
