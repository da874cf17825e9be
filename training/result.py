"""What a training run takes besides the data (:class:`TrainOptions`) and produces (:class:`TrainResult`).

Kept apart from :mod:`training.pipeline` so that the report, the summary and an architecture's
report panels can name a result without importing the pipeline that makes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.artifact import ModelMetadata
from training import defaults
from training.data.folds import CrossFitPlan
from training.data.samples import Samples
from training.data.splits import Splits
from training.fitting.fit import EpochCallback, FitConfig, FitResult, NetworkBuilder
from training.models.ae import ScoringGraph


@dataclass(frozen=True)
class TrainOptions:
    """Everything that decides a model besides the data.

    Attributes
    ----------
    fit : FitConfig
        Network and optimiser settings; ``fit.architecture`` names the entry of
        :data:`training.registry.ARCHITECTURES` that trains.
    thresholds : tuple of str
        Threshold specs (``warning=q0.99``, ``x=fpr0.001``, ``x=f1``, ``x=fixed2.5``).
    name : str
        Model name stored in the metadata.
    version : str or None
        Model version; ``None`` = a short hash of the data fingerprint and the options.
    contaminated : bool
        Train on all rows, anomalies included.
    allow_overcomplete : bool
        Accept a coding size >= the number of features (with a warning).
    crossfit_folds : int
        ``k >= 2``: cross-fit (see :mod:`training.fitting.crossfit`): thresholds and evaluation from
        out-of-fold scores, the served networks trained on all normal rows but a validation
        slice. ``0`` or ``1``: the plain train / validation / calibration / evaluation split.
    source : str
        Where the data came from (file name), for provenance.
    semi_supervised : bool
        Labels may be unknown; pretrain on every row, then fine-tune under an anomaly head on the
        labelled ones (:func:`training.api.train_semi_supervised`).
    """

    fit: FitConfig = field(default_factory=FitConfig)
    thresholds: tuple[str, ...] = defaults.DEFAULT_THRESHOLDS
    name: str = "model"
    version: str | None = None
    contaminated: bool = False
    allow_overcomplete: bool = False
    crossfit_folds: int = defaults.CROSSFIT_FOLDS
    source: str = ""
    semi_supervised: bool = False


@dataclass(frozen=True)
class FitRequest:
    """What an architecture's ``fit`` hook is given: the samples, their splits, the settings."""

    samples: Samples
    splits: Splits
    #: The row-wise cross-fitting plan, or ``None``.
    plan: CrossFitPlan | None
    config: FitConfig
    options: TrainOptions
    #: The architecture's ``build`` hook.
    build: NetworkBuilder
    on_epoch: EpochCallback | None = None


@dataclass
class Fitted:
    """What an architecture's ``fit`` hook hands back: the served graph, its fits, a score per sample."""

    #: The scoring graph that is exported (eval mode).
    graph: torch.nn.Module
    #: The served network(s), first one first: their learning curves go into the metadata.
    member_fits: list[FitResult]
    #: One score per sample for calibration and evaluation (out-of-fold when cross-fitted).
    scores: np.ndarray
    #: The metadata's ``training`` entries the fit adds (split sizes, cross-fitting).
    training: dict[str, Any] = field(default_factory=dict)
    #: Entries the fit adds to the evaluation (the identity check) and to the ``architecture`` section.
    evaluation: dict[str, Any] = field(default_factory=dict)
    architecture: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What a training run produced, for the summary, the report and the detector."""

    path: Path | None
    metadata: ModelMetadata
    fit: FitResult
    graph: ScoringGraph
    splits: Splits
    #: The scores calibration and evaluation used, one per sample of ``x``: out-of-fold when
    #: cross-fitted (not the exported graph's scores then; ``graph_scores(graph, x)`` gives those).
    scores: np.ndarray
    #: The samples the network saw, ``[n, *sample_shape]``: the rows themselves for a row-wise kind.
    x: np.ndarray
    labels: np.ndarray | None
    feature_names: list[str]
    duration_s: float
    fit_seed: int = 0
    #: Every network of the ensemble, ``fit`` first (the report draws each one's learning curves).
    member_fits: list[FitResult] = field(default_factory=list)
    #: The architecture's name in :data:`training.registry.ARCHITECTURES` (export extras, report panels).
    architecture: str = defaults.ARCHITECTURE
    #: The input row each sample's score belongs to (``arange(n)`` for a row-wise kind).
    rows: np.ndarray | None = None

    @property
    def evaluation(self) -> dict[str, Any]:
        return self.metadata.evaluation
