"""`AutoencoderDetector`: a scikit-learn-style estimator over the same training pipeline, for notebooks."""

# scikit-learn names the data argument X; keep its vocabulary.
# ruff: noqa: N803

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training import defaults


class AutoencoderDetector:
    """Undercomplete-autoencoder anomaly detector with the scikit-learn / pyod vocabulary.

    ``fit`` runs :func:`training.api.train_model` (the same code as `aeguard train`), so the
    split, calibration and scoring are those of an exported model; :meth:`save` writes that
    ONNX file.

    Parameters
    ----------
    hidden : list of int, optional
        Encoder hidden sizes (default derived from the number of features).
    coding_size : int, optional
        Coding width (default derived from the number of features; must be < ``n_features``).
    threshold : str
        Threshold spec of the decision boundary, e.g. ``"q0.99"``, ``"fpr0.01"``, ``"f1"``.
    tied_weights : bool
        Decoder weights = encoder weights transposed.
    denoise : float
        Gaussian input-noise sigma while training.
    activation : str
        Hidden-layer activation; a comma-separated list (``"elu,tanh"``) fits one network per
        entry and averages their scores.
    max_epochs, patience, batch_size : int
        Optimisation settings.
    lr : float
        Adam learning rate.
    random_state : int
        Seed; same data and seed give the same scores.
    architecture : str
        A name in :data:`training.registry.ARCHITECTURES` (``ae``, ``vae``, ...).
    feature_names : list of str, optional
        Column names (default ``f0``, ``f1``, ...).

    Attributes
    ----------
    threshold_ : float
        Scores at or above it are predicted anomalous.
    metadata_ : service.artifact.ModelMetadata
        What the exported model's metadata would hold.
    n_features_in_ : int
        Number of features seen in ``fit``.
    """

    def __init__(
        self,
        hidden: list[int] | None = None,
        coding_size: int | None = None,
        threshold: str = "q0.99",
        *,
        tied_weights: bool = False,
        denoise: float = 0.0,
        activation: str = defaults.ACTIVATION,
        max_epochs: int = defaults.MAX_EPOCHS,
        patience: int = defaults.PATIENCE,
        batch_size: int = defaults.BATCH_SIZE,
        lr: float = defaults.LEARNING_RATE,
        random_state: int = defaults.SEED,
        feature_names: list[str] | None = None,
        architecture: str = defaults.ARCHITECTURE,
    ) -> None:
        self.hidden = hidden
        self.coding_size = coding_size
        self.threshold = threshold
        self.tied_weights = tied_weights
        self.denoise = denoise
        self.activation = activation
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.lr = lr
        self.random_state = random_state
        self.feature_names = feature_names
        self.architecture = architecture

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters (scikit-learn protocol)."""
        keys = [
            "hidden",
            "coding_size",
            "threshold",
            "tied_weights",
            "denoise",
            "activation",
            "max_epochs",
            "patience",
            "batch_size",
            "lr",
            "random_state",
            "feature_names",
            "architecture",
        ]
        return {k: getattr(self, k) for k in keys}

    def set_params(self, **params: Any) -> AutoencoderDetector:
        """Set constructor parameters (scikit-learn protocol)."""
        for key, value in params.items():
            if key not in self.get_params():
                raise ValueError(f"unknown parameter {key!r}")
            setattr(self, key, value)
        return self

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> AutoencoderDetector:
        """Fit on ``X``; with ``y`` (0 = normal, 1 = anomaly) only normal rows train the network.

        Returns
        -------
        AutoencoderDetector
            ``self``.
        """
        from training.api import TrainOptions, train_model
        from training.fitting.fit import FitConfig

        x = np.asarray(X)
        names = self.feature_names or [f"f{i}" for i in range(x.shape[1] if x.ndim == 2 else 0)]
        options = TrainOptions(
            fit=FitConfig(
                hidden=self.hidden,
                coding_size=self.coding_size,
                tied_weights=self.tied_weights,
                denoise_sigma=self.denoise,
                activation=self.activation,
                max_epochs=self.max_epochs,
                patience=self.patience,
                batch_size=self.batch_size,
                lr=self.lr,
                seed=self.random_state,
                architecture=self.architecture,
            ),
            thresholds=(f"anomaly={self.threshold}",),
            name="detector",
            source="AutoencoderDetector.fit",
        )
        self.result_ = train_model(x, names, None, labels=y, options=options)
        self.metadata_ = self.result_.metadata
        self.threshold_ = float(self.metadata_.primary_threshold.value)
        self.n_features_in_ = int(x.shape[1])
        self.feature_names_in_ = list(names)
        return self

    def _check(self, X: np.ndarray) -> np.ndarray:
        if not hasattr(self, "result_"):
            raise RuntimeError("this AutoencoderDetector is not fitted yet; call fit(X) first")
        from service.scorer import check_rows

        return check_rows(np.asarray(X), self.metadata_)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Anomaly scores: the artifact's ``score`` (reconstruction error); higher = more anomalous."""
        from training.api import graph_scores

        x = self._check(X)
        return graph_scores(self.result_.graph, x)

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """scikit-learn's convention: higher = more normal (the negated decision function)."""
        return -self.decision_function(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """0 = normal, 1 = anomaly (score >= ``threshold_``)."""
        return (self.decision_function(X) >= self.threshold_).astype(int)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The codings ``[n, coding_size]``: the autoencoder as a dimensionality reducer."""
        import torch

        x = self._check(X)
        with torch.no_grad():
            return self.result_.graph(torch.from_numpy(x))[2].numpy()

    def save(self, path: str | Path) -> Path:
        """Export the fitted model as an aeguard ONNX file (servable by `aeguard serve`)."""
        from training.api import export_model

        if not hasattr(self, "result_"):
            raise RuntimeError("fit the detector before saving it")
        path = export_model(self.result_, path)
        self.metadata_ = self.result_.metadata
        return path
