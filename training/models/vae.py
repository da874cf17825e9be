"""The variational autoencoder: a Gaussian encoder (mean, log-variance) and decoder, and its generator graph.

It is an :class:`~training.models.ae.Autoencoder` whose ``encode`` returns the posterior means, so the
scoring graph, whitening, calibration and export treat it like any other member: ``codes`` are
the means and ``reconstruction`` is the decoding of the means. What differs is the training loss
(negative ELBO with the reparameterisation trick and a warmed-up KL weight) and that the decoder
can generate rows from the prior, which :class:`GeneratorGraph` exports for `aeguard sample`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from training.models.ae import Autoencoder

#: ``architecture.kind`` of a VAE in the metadata (``dense_autoencoder`` for the plain one).
KIND = "variational_autoencoder"
#: Posterior log-variances are clipped to this range: exp() of larger values overflows the KL term.
LOGVAR_MIN, LOGVAR_MAX = -12.0, 8.0
#: Smallest per-feature observation variance (scaled space). A column the decoder reproduces
#: exactly (a constant one) would otherwise drive its variance, and the loss, to minus infinity.
OBSERVATION_VARIANCE_FLOOR = 1e-3


class VariationalAutoencoder(Autoencoder):
    """A dense VAE: Gaussian posterior ``q(c | x)`` per coding unit, Gaussian decoder ``p(x | c)``.

    The encoder is the autoencoder's (its last layer gives the posterior means) plus a second
    head on the last hidden layer for the log-variances. The decoder mirrors the encoder, as
    for :class:`~training.models.ae.Autoencoder`, and has a learned variance per feature (the
    decoder's noise, in scaled units), which makes the loss a proper negative ELBO and gives
    generated rows their spread. The prior is the standard normal.

    Parameters
    ----------
    n_features, hidden, coding_size, tied_weights, activation
        As for :class:`~training.models.ae.Autoencoder`.
    kl_weight, kl_warmup_epochs : float, int
        Weight of the KL term in the loss (1 = the ELBO) and the epochs over which it warms up
        from 0 (:func:`kl_weight_at`); early stopping waits for the warm-up to end.
    """

    def __init__(
        self,
        n_features: int,
        hidden: Sequence[int],
        coding_size: int,
        *,
        tied_weights: bool = False,
        activation: str = "elu",
        kl_weight: float = 1.0,
        kl_warmup_epochs: int = 0,
    ) -> None:
        super().__init__(n_features, hidden, coding_size, tied_weights=tied_weights, activation=activation)
        self.kl_weight = kl_weight
        self.kl_warmup_epochs = kl_warmup_epochs
        self.logvar_head = nn.Linear(self.sizes[-2], coding_size)
        # Start at variance 1 in scaled space: the spread of a standardised feature.
        self.observation_logvar = nn.Parameter(torch.zeros(n_features))

    def _last_hidden(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for layer in list(self.encoder)[:-1]:
            h = self.act(layer(h))
        return h

    def encode_stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior means and log-variances ``[n, k]`` of scaled inputs ``[n, d]``."""
        h = self._last_hidden(z)
        return self.encoder[-1](h), self.logvar_head(h).clamp(LOGVAR_MIN, LOGVAR_MAX)

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """The posterior means ``[n, k]``: the model's codings (the scoring graph needs no variances)."""
        return self.encoder[-1](self._last_hidden(z))

    def score_penalty(self, z: torch.Tensor) -> torch.Tensor:
        """``2 KL(q(c | x) || N(0, I)) / d`` per row: added to the mean squared (whitened) residual, the
        score is the negative ELBO under a Gaussian decoder with the residuals' covariance, times
        ``2 / d``, up to a constant (docs/vae.md: it detected better than the residual alone)."""
        mean, logvar = self.encode_stats(z)
        return 2.0 * kl_divergence(mean, logvar) / z.shape[1]

    def training_loss(
        self, inputs: torch.Tensor, target: torch.Tensor, epoch: int, generator: torch.Generator
    ) -> torch.Tensor:
        """The mean negative ELBO of a minibatch, with the KL weight warmed up to ``epoch``."""
        kl_weight = kl_weight_at(self.kl_weight, self.kl_warmup_epochs, epoch)
        return self.neg_elbo(inputs, target, kl_weight, generator).mean()

    def validation_loss_sum(self, z: torch.Tensor) -> float:
        """The summed negative ELBO at the posterior means, with the full KL weight."""
        return float(self.neg_elbo(z, z, self.kl_weight, None).sum())

    def min_stop_epoch(self) -> int:
        """Early stopping waits for the KL warm-up to end."""
        return self.kl_warmup_epochs

    def output_logvar(self) -> torch.Tensor:
        """Per-feature log-variance of the decoder's Gaussian, floored (see module constants)."""
        return self.observation_logvar.clamp(min=math.log(OBSERVATION_VARIANCE_FLOOR))

    def neg_elbo(
        self, inputs: torch.Tensor, target: torch.Tensor, kl_weight: float, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Per-row negative ELBO (up to a constant) divided by ``d``, with the KL term weighted.

        Parameters
        ----------
        inputs : torch.Tensor
            Scaled rows fed to the encoder (noisy when denoising).
        target : torch.Tensor
            Scaled rows to reconstruct.
        kl_weight : float
            Weight of the KL term (1 = the ELBO).
        generator : torch.Generator or None
            Draws the reparameterisation noise; ``None`` decodes the posterior means instead (a
            deterministic, single-point estimate, used for validation).

        Returns
        -------
        torch.Tensor
            ``[n]``: ``(sum_j 0.5 (r_j^2 / s_j + log s_j) + kl_weight * KL) / d``.
        """
        mean, logvar = self.encode_stats(inputs)
        codes = mean
        if generator is not None:
            codes = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)
        out_logvar = self.output_logvar()
        nll = 0.5 * (((self.decode(codes) - target) ** 2) * torch.exp(-out_logvar) + out_logvar).sum(dim=1)
        return (nll + kl_weight * kl_divergence(mean, logvar)) / target.shape[1]


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, exp(logvar)) || N(0, I))`` per row, ``[n]``."""
    return 0.5 * (mean**2 + torch.exp(logvar) - 1.0 - logvar).sum(dim=1)


def kl_weight_at(kl_weight: float, warmup_epochs: int, epoch: int) -> float:
    """The KL weight in ``epoch`` (1-based): rises linearly to ``kl_weight`` over ``warmup_epochs``.

    A full KL term from the first step pulls every posterior onto the prior before the decoder
    has learned to use the codings (posterior collapse); warming it up lets the codings carry
    information first.
    """
    if warmup_epochs <= 0:
        return kl_weight
    return kl_weight * min(1.0, epoch / warmup_epochs)


class GeneratorGraph(nn.Module):
    """What `aeguard sample` runs: prior draws and noise in, generated rows in raw units out.

    Inputs are ``z`` ``[n, k_max]`` (standard normal; member ``i`` reads its first ``k_i``
    columns) and ``noise`` ``[n, d]`` (standard normal, scaled by each member's decoder standard
    deviation). The output ``samples`` ``[members, n, d]`` holds every member's rows; the
    sampler picks one member per row, so an ensemble generates from the mixture of its members.

    Parameters
    ----------
    members : sequence of VariationalAutoencoder
        The fitted networks (one for a single model).
    mean, scale : torch.Tensor
        The scaler of the scoring graph: ``x = scaled * scale + mean``.
    """

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, members: Sequence[VariationalAutoencoder], mean: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("scale", scale.detach().clone().float())
        self.coding_sizes = [m.sizes[-1] for m in members]

    @property
    def latent_size(self) -> int:
        """Width of the ``z`` input: the widest member's coding size."""
        return max(self.coding_sizes)

    def forward(self, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        rows = []
        for member, k in zip(self.members, self.coding_sizes, strict=True):
            assert isinstance(member, VariationalAutoencoder)
            scaled = member.decode(z[:, :k]) + noise * torch.exp(0.5 * member.output_logvar())
            rows.append(scaled * self.scale + self.mean)
        return torch.stack(rows)
