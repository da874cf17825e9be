"""The few-labels network: an anomaly head on a pretrained autoencoder's encoder, and its fine-tuning.

The head reuses the lower layers of the first network's encoder (as the autoencoder notes put
it: train the autoencoder on all rows, reuse its lower layers, train the classifier on the
labelled ones). It starts from the reconstruction score and learns a correction from labels:
``logit = alpha * standardised log(reconstruction score) + bias + mlp(features, log score)``,
``features`` the encoder's last hidden layer, with the MLP's last layer initialised to zero, and
``alpha`` set before fine-tuning from how well the reconstruction ranks the labelled anomalies
(:func:`training.fitting.semi.reconstruction_evidence`). Before fine-tuning, the ranking is the
unsupervised one; a handful of labelled anomalies then moves it only as far as they justify. The
exported score is ``-log(1 - p) = softplus(logit)``: positive (thresholds must be > 0), rising
with the anomaly probability ``p``, and without the ties a sigmoid's saturation at 1 would cause.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training import defaults
from training.fitting.fit import fit_scaler, seed_everything
from training.models.ae import ACTIVATIONS, Autoencoder, ScoringGraph

#: Added to the reconstruction score before its logarithm (whitened scores are about 1 on normal rows).
LOG_EPS = 1e-6


def positive_softplus(logit: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(logit)) = -log(1 - sigmoid(logit))``, exact to float32 far into the negative tail.

    Written out rather than ``nn.functional.softplus`` because ``log(1 + u)`` rounds ``u < 6e-8``
    to 0, which would tie every clearly normal row at a score of 0; the series ``u - u**2 / 2``
    keeps them ordered down to ``logit`` of about -87.
    """
    u = torch.exp(-logit.abs())
    return torch.relu(logit) + torch.where(u < 1e-4, u * (1 - 0.5 * u), torch.log(1 + u))


def lower_layers(autoencoder: Autoencoder, z: torch.Tensor) -> torch.Tensor:
    """The encoder's last hidden layer for scaled rows (its codes when it has no hidden layer).

    Wider than the codes, so a few labels can pick out a direction the reconstruction did not
    need: on optdigits with one labelled anomaly (seed 0), the head's MLP alone ranked the test
    rows at ROC-AUC 0.54 when it read the 8 codes and 0.74 when it read the 128 hidden units.
    """
    layers = list(autoencoder.encoder)
    if len(layers) == 1:
        return autoencoder.encode(z)
    h = z
    for layer in layers[:-1]:
        h = autoencoder.act(layer(h))
    return h


class AnomalyHead(nn.Module):
    """Maps encoder features (and the log reconstruction score) to an anomaly logit.

    Parameters
    ----------
    n_features : int
        Width of the encoder features it reads.
    hidden : int
        Width of the MLP's hidden layer.
    activation : str
        Its activation (a name of :data:`training.models.ae.ACTIVATIONS`).
    features_mean, features_std : numpy.ndarray
        Standardisation of the features (an encoder's output scale is arbitrary).
    score_mean, score_std : float or None
        Standardisation of ``log(score + LOG_EPS)``; ``None`` = a head without the reconstruction
        input (the from-scratch baseline, whose decoder is untrained).
    """

    features_mean: torch.Tensor
    features_std: torch.Tensor
    score_mean: torch.Tensor
    score_std: torch.Tensor
    alpha: torch.Tensor

    def __init__(
        self,
        n_features: int,
        hidden: int,
        activation: str,
        features_mean: np.ndarray,
        features_std: np.ndarray,
        score_mean: float | None = None,
        score_std: float | None = None,
    ) -> None:
        super().__init__()
        self.uses_score = score_mean is not None
        self.register_buffer("features_mean", torch.as_tensor(features_mean, dtype=torch.float32).clone())
        self.register_buffer(
            "features_std", torch.as_tensor(np.maximum(features_std, 1e-6), dtype=torch.float32)
        )
        self.register_buffer("score_mean", torch.tensor(float(score_mean or 0.0)))
        self.register_buffer("score_std", torch.tensor(max(float(score_std or 1.0), 1e-6)))
        n_in = n_features + (1 if self.uses_score else 0)
        self.mlp = nn.Sequential(nn.Linear(n_in, hidden), ACTIVATIONS[activation](), nn.Linear(hidden, 1))
        last = self.mlp[-1]
        assert isinstance(last, nn.Linear)
        if self.uses_score:
            # Start from the unsupervised ranking: the correction is 0 until labels move it.
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        # A fixed weight, not learnt: a handful of labels cannot tell it, and the negatives the head
        # learns from are chosen by this very score (training.fitting.semi.reliable_negatives).
        self.register_buffer("alpha", torch.tensor(1.0 if self.uses_score else 0.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def forward(self, features: torch.Tensor, score: torch.Tensor | None = None) -> torch.Tensor:
        c = (features - self.features_mean) / self.features_std
        if not self.uses_score:
            return self.mlp(c).squeeze(1) + self.bias
        assert score is not None
        s = (torch.log(score + LOG_EPS) - self.score_mean) / self.score_std
        return self.alpha * s + self.bias + self.mlp(torch.cat([c, s.unsqueeze(1)], dim=1)).squeeze(1)


class SemiSupervisedGraph(ScoringGraph):
    """A :class:`~training.models.ae.ScoringGraph` whose ``score`` is the head's ``-log(1 - p)``.

    ``feature_errors``, ``codes`` and ``reconstruction`` stay the autoencoder's, so the artifact
    keeps its contract and top-k explanations still name the features that reconstruct badly.
    """

    def __init__(
        self,
        autoencoders: Sequence[Autoencoder],
        mean: torch.Tensor,
        scale: torch.Tensor,
        error_whitening: Sequence[torch.Tensor] | None,
        head: AnomalyHead,
    ) -> None:
        super().__init__(autoencoders, mean, scale, error_whitening)
        self.head = head

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """The head's anomaly logit for raw rows."""
        score = super().forward(x)[0]
        return self.head(lower_layers(self.autoencoder, (x - self.mean) / self.scale), score)

    def reconstruction_score(self, x: torch.Tensor) -> torch.Tensor:
        """The autoencoder's own score (what an unsupervised model would output)."""
        return super().forward(x)[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        score, feature_errors, codes, reconstruction = super().forward(x)
        logit = self.head(lower_layers(self.autoencoder, (x - self.mean) / self.scale), score)
        return positive_softplus(logit), feature_errors, codes, reconstruction


@dataclass(frozen=True)
class FineTuneConfig:
    """Settings of the supervised phase.

    Attributes
    ----------
    steps : int
        Optimiser steps.
    lr : float
        Adam learning rate (lower than pretraining's, so the encoder is adjusted, not relearnt).
    batch_size : int
        Rows presumed normal per step.
    positives_per_step : int
        Labelled anomalies per step, drawn with replacement (there may be only one).
    reconstruction_weight : float
        Weight of the first network's reconstruction loss on the presumed-normal rows, which keeps
        its decoder consistent with the fine-tuned encoder (so ``feature_errors`` stay meaningful).
    head_weight_decay : float
        L2 penalty on the head, against fitting a handful of labels exactly.
    seed : int
        Batch order.
    """

    steps: int = defaults.SEMI_FINE_TUNE_STEPS
    lr: float = defaults.SEMI_FINE_TUNE_LR
    batch_size: int = defaults.BATCH_SIZE
    positives_per_step: int = defaults.SEMI_POSITIVES_PER_STEP
    reconstruction_weight: float = defaults.SEMI_RECONSTRUCTION_WEIGHT
    head_weight_decay: float = defaults.SEMI_HEAD_WEIGHT_DECAY
    seed: int = defaults.SEED


def class_loss(logit_negative: torch.Tensor, logit_positive: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with both classes weighted equally, however few the positives."""
    return 0.5 * (
        nn.functional.softplus(logit_negative).mean() + nn.functional.softplus(-logit_positive).mean()
    )


#: Raw rows tensor -> a tensor (logits per row, or a scalar loss).
TensorFn = Callable[[torch.Tensor], torch.Tensor]


def fine_tune(
    module: nn.Module,
    logit: TensorFn,
    trainable: list[nn.Parameter],
    head: AnomalyHead,
    x_negative: np.ndarray,
    x_positive: np.ndarray,
    config: FineTuneConfig,
    reconstruction_loss: TensorFn | None = None,
) -> list[float]:
    """Minimise :func:`class_loss` (plus a reconstruction term) with Adam for ``config.steps`` steps.

    Parameters
    ----------
    module : torch.nn.Module
        The module that owns ``trainable`` (switched to train / eval mode).
    logit : callable
        Raw rows tensor -> logits.
    trainable : list of torch.nn.Parameter
        The parameters to update besides the head's.
    head : AnomalyHead
        Its parameters get ``config.head_weight_decay``.
    x_negative, x_positive : numpy.ndarray
        Raw rows presumed normal (labelled normal and unlabelled) and labelled anomalies.
    config : FineTuneConfig
    reconstruction_loss : callable, optional
        Raw rows tensor -> scalar loss, added with ``config.reconstruction_weight``.

    Returns
    -------
    list of float
        The loss of every step.
    """
    gen = seed_everything(config.seed)
    head_params = [p for p in head.parameters() if p.requires_grad]
    groups: list[dict[str, object]] = [{"params": head_params, "weight_decay": config.head_weight_decay}]
    if trainable:
        groups.append({"params": trainable, "weight_decay": 0.0})
    opt = torch.optim.Adam(groups, lr=config.lr)  # type: ignore[arg-type]  # param-group dicts
    neg = torch.from_numpy(np.ascontiguousarray(x_negative, dtype=np.float32))
    pos = torch.from_numpy(np.ascontiguousarray(x_positive, dtype=np.float32))
    bs = max(1, min(config.batch_size, neg.shape[0]))
    losses = []
    module.train()
    for _ in range(config.steps):
        xb_neg = neg[torch.randint(neg.shape[0], (bs,), generator=gen)]
        xb_pos = pos[torch.randint(pos.shape[0], (config.positives_per_step,), generator=gen)]
        loss = class_loss(logit(xb_neg), logit(xb_pos))
        if reconstruction_loss is not None and config.reconstruction_weight > 0:
            loss = loss + config.reconstruction_weight * reconstruction_loss(xb_neg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
    module.eval()
    return losses


def head_width(coding_size: int) -> int:
    """Hidden width of the head's MLP: ``clip(2 * (k + 1), 8, 32)``."""
    return int(min(32, max(8, 2 * (coding_size + 1))))


def build_semi_graph(base: ScoringGraph, x_fit: np.ndarray) -> SemiSupervisedGraph:
    """Put a fresh head on a fitted scoring graph, standardising its inputs on ``x_fit`` (raw rows)."""
    first = base.autoencoder
    with torch.no_grad():
        x_t = torch.from_numpy(np.ascontiguousarray(x_fit, dtype=np.float32))
        score = base(x_t)[0]
        features = lower_layers(first, (x_t - base.mean) / base.scale).numpy().astype(np.float64)
    log_score = np.log(score.numpy().astype(np.float64) + LOG_EPS)
    head = AnomalyHead(
        features.shape[1],
        head_width(first.sizes[-1]),
        first.activation_name,
        features.mean(axis=0),
        features.std(axis=0),
        float(log_score.mean()),
        float(log_score.std()) or 1.0,
    )
    whitening = None if base.error_whitening is None else list(base.error_whitening)
    members = [m for m in base.members if isinstance(m, Autoencoder)]
    return SemiSupervisedGraph(members, base.mean, base.scale, whitening, head).eval()


def fine_tune_graph(
    graph: SemiSupervisedGraph, x_negative: np.ndarray, x_positive: np.ndarray, config: FineTuneConfig
) -> list[float]:
    """Fine-tune the first network (encoder and decoder) and the head; the other networks stay fixed."""
    first = graph.autoencoder
    for member in graph.members[1:]:
        member.requires_grad_(False)

    def reconstruction(xb: torch.Tensor) -> torch.Tensor:
        z = (xb - graph.mean) / graph.scale
        return ((first(z) - z) ** 2).mean()

    return fine_tune(
        graph,
        graph.logit,
        list(first.parameters()),
        graph.head,
        x_negative,
        x_positive,
        config,
        reconstruction,
    )


class ScratchClassifier(nn.Module):
    """The same encoder and head, trained from random weights on the labels alone (a baseline)."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, x_fit: np.ndarray, hidden: list[int], coding_size: int, activation: str) -> None:
        super().__init__()
        mean, scale = fit_scaler(x_fit)
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("scale", torch.from_numpy(scale))
        self.network = Autoencoder(x_fit.shape[1], hidden, coding_size, activation=activation)
        self.network.decoder.requires_grad_(False)  # unused: no reconstruction from labels alone
        with torch.no_grad():
            z = (torch.from_numpy(x_fit.astype(np.float32)) - self.mean) / self.scale
            features = lower_layers(self.network, z).numpy()
        # Features of random weights: standardise them as they are now; training rescales them anyway.
        self.head = AnomalyHead(
            features.shape[1],
            head_width(coding_size),
            activation,
            features.mean(axis=0),
            features.std(axis=0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(lower_layers(self.network, (x - self.mean) / self.scale))


def fit_scratch_classifier(
    x_negative: np.ndarray,
    x_positive: np.ndarray,
    hidden: list[int],
    coding_size: int,
    activation: str,
    config: FineTuneConfig,
) -> ScratchClassifier:
    """Train :class:`ScratchClassifier` with the fine-tuning loop, ``config`` and no reconstruction term."""
    seed_everything(config.seed)
    model = ScratchClassifier(np.vstack([x_negative, x_positive]), hidden, coding_size, activation)
    encoder_params = [p for p in model.network.encoder.parameters()]
    fine_tune(model, model, encoder_params, model.head, x_negative, x_positive, config)
    return model


def logits(module: nn.Module, x: np.ndarray, batch_rows: int = 8192) -> np.ndarray:
    """Apply a logit module to raw rows in batches, without gradients."""
    out = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_rows):
            out.append(
                module(torch.from_numpy(np.ascontiguousarray(x[start : start + batch_rows], np.float32)))
            )
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)
