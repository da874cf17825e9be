"""The dense autoencoder and the scoring graph that wraps it (scaler, encoder, decoder, error)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

#: Hidden-layer activations by name.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


def layer_sizes(n_features: int, hidden: Sequence[int], coding_size: int) -> list[int]:
    """Sizes from the input to the coding layer, e.g. ``[d, *hidden, k]``."""
    return [n_features, *hidden, coding_size]


class Autoencoder(nn.Module):
    """A dense autoencoder with a mirrored decoder.

    Hidden layers use ``activation``; the coding layer and the output layer are linear.

    Parameters
    ----------
    n_features : int
        Input width ``d``.
    hidden : sequence of int
        Hidden-layer sizes of the encoder (the decoder mirrors them).
    coding_size : int
        Width ``k`` of the coding layer.
    tied_weights : bool
        If true, each decoder layer uses the transposed weight of its encoder layer and owns
        only a bias, halving the number of weights.
    activation : str
        One of ``relu``, ``elu``, ``tanh``, ``gelu``.
    """

    def __init__(
        self,
        n_features: int,
        hidden: Sequence[int],
        coding_size: int,
        *,
        tied_weights: bool = False,
        activation: str = "elu",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        sizes = layer_sizes(n_features, hidden, coding_size)
        self.sizes = sizes
        self.tied_weights = tied_weights
        self.activation_name = activation
        self.act = ACTIVATIONS[activation]()
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
        rev = sizes[::-1]
        if tied_weights:
            self.decoder = nn.ModuleList()
            self.decoder_bias = nn.ParameterList(nn.Parameter(torch.zeros(b)) for b in rev[1:])
        else:
            self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(rev))
            self.decoder_bias = nn.ParameterList()

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Map scaled inputs ``[n, d]`` to codings ``[n, k]``."""
        last = len(self.encoder) - 1
        for i, layer in enumerate(self.encoder):
            z = layer(z)
            if i < last:
                z = self.act(z)
        return z

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Map codings ``[n, k]`` back to scaled inputs ``[n, d]``."""
        n_layers = len(self.encoder)
        h = codes
        for i in range(n_layers):
            if self.tied_weights:
                weight = self.encoder_weight(n_layers - 1 - i)
                h = nn.functional.linear(h, weight.t(), self.decoder_bias[i])
            else:
                h = self.decoder[i](h)  # type: ignore[operator]  # ModuleList items are Modules
            if i < n_layers - 1:
                h = self.act(h)
        return h

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(z))

    def encoder_weight(self, index: int) -> torch.Tensor:
        """The weight matrix ``[out, in]`` of encoder layer ``index``."""
        layer = self.encoder[index]
        assert isinstance(layer, nn.Linear)
        return layer.weight

    def training_loss(
        self, inputs: torch.Tensor, target: torch.Tensor, epoch: int, generator: torch.Generator
    ) -> torch.Tensor:
        """The minibatch loss minimised in ``epoch`` (1-based): the mean squared error in scaled space."""
        return ((self(inputs) - target) ** 2).mean()

    def validation_loss_sum(self, z: torch.Tensor) -> float:
        """The summed per-row loss of scaled rows ``z`` that early stopping watches."""
        return float(((self(z) - z) ** 2).mean(dim=1).sum())

    def min_stop_epoch(self) -> int:
        """The first epoch at which early stopping may stop (a VAE waits for its KL warm-up)."""
        return 0

    def score_penalty(self, z: torch.Tensor) -> torch.Tensor | None:
        """A per-row term ``[n]`` the scoring graph adds to the score; none for a plain autoencoder
        (a variational one adds its KL term, see :mod:`training.models.vae`)."""
        return None

    def weight_count(self) -> int:
        """Number of weight-matrix entries (biases excluded)."""
        return sum(p.numel() for name, p in self.named_parameters() if name.endswith("weight"))


class ScoringGraph(nn.Module):
    """What goes into the ONNX file: raw rows in; score, feature errors, codes, reconstruction out.

    Parameters
    ----------
    autoencoders : Autoencoder or sequence of Autoencoder
        The fitted network, or the members of an ensemble fitted on the same rows (all work in
        the same scaled space).
    mean, scale : torch.Tensor
        Per-feature standardisation: ``z = (x - mean) / scale``; ``scale`` is never 0.
    error_whitening : torch.Tensor or sequence of torch.Tensor, optional
        One symmetric ``[d, d]`` matrix ``W`` per member, applied to its residual ``r = rec - z``
        before squaring: ``feature_errors = (r @ W) ** 2``. With ``W`` the inverse square root of
        the residual covariance on normal rows (ZCA whitening, see
        :func:`training.fitting.fit.error_whitening`), the score is the Mahalanobis distance of the
        residual divided by ``d``, about 1 on normal rows, and each whitened coordinate stays tied
        to its own feature. ``None`` = identity (plain squared error in scaled space).

    Notes
    -----
    With several members, ``feature_errors`` is the members' mean (so the score is the mean of
    their scores, each about 1 on normal rows), ``reconstruction`` the mean of their
    reconstructions, and ``codes`` the first member's codings. Members with a
    :meth:`~Autoencoder.score_penalty` (variational autoencoders) add its mean to the score.
    """

    mean: torch.Tensor
    scale: torch.Tensor
    error_whitening: torch.Tensor | None

    def __init__(
        self,
        autoencoders: Autoencoder | Sequence[Autoencoder],
        mean: torch.Tensor,
        scale: torch.Tensor,
        error_whitening: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        members = [autoencoders] if isinstance(autoencoders, Autoencoder) else list(autoencoders)
        if not members:
            raise ValueError("a scoring graph needs at least one autoencoder")
        self.members = nn.ModuleList(members)
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("scale", scale.detach().clone().float())
        whitening = None
        if error_whitening is not None:
            matrices = (
                [error_whitening] if isinstance(error_whitening, torch.Tensor) else list(error_whitening)
            )
            if len(matrices) != len(members):
                raise ValueError(f"{len(matrices)} whitening matrices for {len(members)} autoencoders")
            whitening = torch.stack([w.detach().clone().float() for w in matrices])  # [members, d, d]
        self.register_buffer("error_whitening", whitening)

    @property
    def autoencoder(self) -> Autoencoder:
        """The first (or only) member: its codings are the graph's ``codes``."""
        first = self.members[0]
        assert isinstance(first, Autoencoder)
        return first

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        z = (x - self.mean) / self.scale
        codes = self.autoencoder.encode(z)
        errors, recs = [], []
        for i, member in enumerate(self.members):
            assert isinstance(member, Autoencoder)
            rec = member.decode(codes if i == 0 else member.encode(z))
            residual = rec - z
            if self.error_whitening is not None:
                residual = residual @ self.error_whitening[i]
            errors.append(residual**2)
            recs.append(rec)
        feature_errors = errors[0] if len(errors) == 1 else torch.stack(errors).mean(dim=0)
        rec = recs[0] if len(recs) == 1 else torch.stack(recs).mean(dim=0)
        score = feature_errors.mean(dim=1)
        penalties = []
        for member in self.members:
            assert isinstance(member, Autoencoder)
            penalty = member.score_penalty(z)
            if penalty is not None:
                penalties.append(penalty)
        if penalties:
            score = score + (penalties[0] if len(penalties) == 1 else torch.stack(penalties).mean(dim=0))
        return score, feature_errors, codes, rec * self.scale + self.mean
