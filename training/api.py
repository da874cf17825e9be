"""Train from arrays: split, fit, calibrate, evaluate, export. The one pipeline every entry point uses.

`aeguard train`, :class:`training.detector.AutoencoderDetector`, the built-in default and the tests
all call :func:`train_model`, so they cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.artifact import ModelMetadata, Threshold
from service.errors import InvalidInputError
from training import calibrate, defaults, vae
from training.crossfit import CrossFitResult, crossfit, plan_crossfit
from training.data import check_matrix
from training.evaluate import detection_metrics, identity_check
from training.export import EXPORTER, check_parity, to_onnx, write_model
from training.fit import EpochCallback, FitConfig, FitResult, fit_ensemble, fit_summary
from training.model import ScoringGraph
from training.splits import Splits, make_splits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    """Everything that decides a model besides the data.

    Attributes
    ----------
    fit : FitConfig
        Network and optimiser settings.
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
        ``k >= 2``: cross-fit (see :mod:`training.crossfit`): thresholds and evaluation from
        out-of-fold scores, the served networks trained on all normal rows but a validation
        slice. ``0`` or ``1``: the plain train / validation / calibration / evaluation split.
    source : str
        Where the data came from (file name), for provenance.
    semi_supervised : bool
        Labels may be unknown; pretrain on every row, then fine-tune under an anomaly head on the
        labelled ones (:mod:`training.semi`).
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


@dataclass
class TrainResult:
    """What a training run produced, for the summary, the report and the detector."""

    path: Path | None
    metadata: ModelMetadata
    fit: FitResult
    graph: ScoringGraph
    splits: Splits
    #: The scores calibration and evaluation used, one per row of ``x``: out-of-fold when
    #: cross-fitted (not the exported graph's scores then; ``graph_scores(graph, x)`` gives those).
    scores: np.ndarray
    x: np.ndarray
    labels: np.ndarray | None
    feature_names: list[str]
    duration_s: float
    fit_seed: int = 0
    #: Every network of the ensemble, ``fit`` first (the report draws each one's learning curves).
    member_fits: list[FitResult] = field(default_factory=list)

    @property
    def evaluation(self) -> dict[str, Any]:
        return self.metadata.evaluation


def resolve_fit_config(n_features: int, config: FitConfig, allow_overcomplete: bool) -> FitConfig:
    """Fill in the default hidden sizes and coding size; refuse an overcomplete coding layer.

    Parameters
    ----------
    n_features : int
        Input width ``d``.
    config : FitConfig
        Settings where ``hidden`` / ``coding_size`` / ``member_coding_sizes`` may be ``None``.
    allow_overcomplete : bool
        Accept ``coding_size >= d`` with a warning instead of refusing.

    Returns
    -------
    FitConfig
        With ``hidden`` and ``coding_size`` set, and ``member_coding_sizes`` when the coding size
        was derived (an explicit ``coding_size`` applies to every member).
    """
    n_members = max(1, len(defaults.activation_list(config.activation)))
    member_sizes = config.member_coding_sizes
    if member_sizes is None and config.coding_size is None:
        member_sizes = defaults.member_coding_sizes(n_features, n_members)
    if member_sizes is not None and config.coding_size not in (None, member_sizes[0]):
        raise InvalidInputError(
            f"coding size {config.coding_size} differs from the first member's {member_sizes[0]}; "
            "give one of them"
        )
    k = member_sizes[0] if member_sizes is not None else int(config.coding_size or 0)
    hidden = list(config.hidden) if config.hidden is not None else defaults.default_hidden(n_features)
    sizes = member_sizes or (k,)
    widest = max(sizes)
    if min(sizes) < 1 or any(h < 1 for h in hidden):
        raise InvalidInputError(f"layer sizes must be >= 1, got hidden {hidden} and coding size {k}")
    if widest >= n_features:
        msg = (
            f"coding size {widest} is not smaller than the {n_features} input feature(s): an overcomplete "
            "autoencoder can learn to copy its input and then flags nothing"
        )
        if not allow_overcomplete:
            raise InvalidInputError(
                f"{msg}; choose --coding-size < {n_features} or pass --allow-overcomplete"
            )
        log.warning("%s (allowed by --allow-overcomplete)", msg)
    unknown = defaults.unknown_activations(config.activation)
    if unknown:
        raise InvalidInputError(
            f"unknown activation(s) {', '.join(repr(a) for a in unknown)} in {config.activation!r}; "
            f"choose from {', '.join(defaults.ACTIVATION_NAMES)}, comma-separated for an ensemble"
        )
    if config.denoise_sigma < 0:
        raise InvalidInputError(f"denoise sigma must be >= 0, got {config.denoise_sigma}")
    if config.architecture not in defaults.ARCHITECTURES:
        raise InvalidInputError(
            f"unknown architecture {config.architecture!r}; choose from {', '.join(defaults.ARCHITECTURES)}"
        )
    if not (config.kl_weight >= 0 and math.isfinite(config.kl_weight)) or config.kl_warmup_epochs < 0:
        raise InvalidInputError(
            f"the KL weight must be finite and >= 0 and its warm-up >= 0 epochs, got {config.kl_weight} "
            f"and {config.kl_warmup_epochs}"
        )
    if member_sizes is not None and len(member_sizes) != n_members:
        raise InvalidInputError(
            f"{len(member_sizes)} member coding sizes for {n_members} network(s) in {config.activation!r}"
        )
    return replace(config, hidden=hidden, coding_size=k, member_coding_sizes=member_sizes)


def fingerprint(x: np.ndarray, feature_names: list[str]) -> str:
    """sha256 of the float32 matrix bytes (C order) and the column names."""
    h = hashlib.sha256()
    h.update(json.dumps(feature_names).encode())
    h.update(str(x.shape).encode())
    h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shaped the artifact."""
    from importlib.metadata import PackageNotFoundError, version

    import onnx
    import onnxruntime
    import sklearn

    try:
        aeguard_version = version("aeguard")
    except PackageNotFoundError:  # pragma: no cover - running from a checkout without install
        aeguard_version = "unknown"
    return {
        "aeguard": aeguard_version,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }


def graph_scores(graph: ScoringGraph, x: np.ndarray, batch_rows: int = 8192) -> np.ndarray:
    """Scores of raw rows through the torch scoring graph (float32)."""
    out = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_rows):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_rows], dtype=np.float32))
            out.append(graph(xb)[0].numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def build_graph(member_fits: list[FitResult]) -> ScoringGraph:
    """The scoring graph (eval mode) of an ensemble's fits: the first member's scaler, every whitening."""
    fitted = member_fits[0]
    whitening = None
    if fitted.error_whitening is not None:
        whitening = [
            torch.from_numpy(f.error_whitening) for f in member_fits if f.error_whitening is not None
        ]
    return ScoringGraph(
        [f.model for f in member_fits],
        torch.from_numpy(fitted.mean),
        torch.from_numpy(fitted.scale),
        whitening,
    ).eval()


def _parity_batch(x: np.ndarray, splits: Splits, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    rows = np.concatenate([splits.calibration[:200], splits.evaluation[-56:]])
    real = x[rows]
    noise = (real.mean(axis=0) + 3 * real.std(axis=0) * rng.standard_normal((8, x.shape[1]))).astype(
        np.float32
    )
    return np.concatenate([real, noise]).astype(np.float32)


def set_threads() -> None:
    """Set torch's intra-op threads (:data:`training.defaults.TORCH_THREADS`, capped by the cores)."""
    torch.set_num_threads(max(1, min(defaults.TORCH_THREADS, os.cpu_count() or 1)))


def train_model(
    x: np.ndarray,
    feature_names: list[str],
    out_path: str | Path | None,
    *,
    labels: np.ndarray | None = None,
    options: TrainOptions | None = None,
    on_epoch: EpochCallback | None = None,
    on_fit_end: Callable[[FitResult], None] | None = None,
) -> TrainResult:
    """Fit an undercomplete autoencoder on ``x`` and export it as one ONNX file.

    Parameters
    ----------
    x : numpy.ndarray
        Raw rows ``[n, d]``, finite numbers.
    feature_names : list of str
        One unique name per column.
    out_path : str, Path or None
        Where to write the model (see :func:`export_model`); ``None`` skips the export.
    labels : numpy.ndarray, optional
        0 = normal, 1 = anomaly. With labels, training uses normal rows only (unless
        ``options.contaminated``) and the evaluation reports ROC-AUC, PR-AUC, P/R/F1.
    options : TrainOptions, optional
        Everything else; defaults from :mod:`training.defaults`.
    on_epoch : callable, optional
        Progress hook ``(epoch, train_loss, validation_loss, best_epoch)``.
    on_fit_end : callable, optional
        Called with the :class:`~training.fit.FitResult` once the network is fitted (before
        calibration and export), e.g. to close a progress bar.

    Returns
    -------
    TrainResult
    """
    started = time.perf_counter()
    options = options or TrainOptions()
    if options.semi_supervised:
        from training.semi import train_semi_supervised

        if labels is None:
            raise InvalidInputError("semi-supervised training needs labels (1, 0 or empty per row)")
        return train_semi_supervised(
            x,
            feature_names,
            out_path,
            labels=labels,
            options=options,
            on_epoch=on_epoch,
            on_fit_end=on_fit_end,
        )
    x, labels = check_matrix(x, feature_names, labels)
    specs = calibrate.parse_threshold_specs(options.thresholds)
    d = x.shape[1]
    config = resolve_fit_config(d, options.fit, options.allow_overcomplete)
    needs_tuning = any(s.method == "f1" for s in specs)
    plan = None
    if options.crossfit_folds >= 2:
        plan = plan_crossfit(
            x.shape[0], labels, seed=config.seed, folds=options.crossfit_folds,
            contaminated=options.contaminated, tune_anomalies=needs_tuning,
        )  # fmt: skip
        splits = plan.splits
    else:
        splits = make_splits(
            x.shape[0], labels, seed=config.seed,
            contaminated=options.contaminated, tune_anomalies=needs_tuning,
        )  # fmt: skip
    set_threads()
    train_rows = splits.train
    if len(train_rows) > defaults.MAX_TRAIN_ROWS:
        rng = np.random.default_rng(config.seed)
        train_rows = np.sort(rng.choice(train_rows, defaults.MAX_TRAIN_ROWS, replace=False))
        log.info("training on a seeded subsample of %d of %d rows", len(train_rows), len(splits.train))
    cross: CrossFitResult | None = None
    if plan is not None:
        cross = crossfit(
            x, plan, config, lambda fits, rows: graph_scores(build_graph(fits), rows), on_epoch=on_epoch
        )
        member_fits = cross.final
    else:
        member_fits = fit_ensemble(x[train_rows], x[splits.validation], config, on_epoch=on_epoch)
    fitted = member_fits[0]
    if on_fit_end is not None:
        on_fit_end(fitted)
    graph = build_graph(member_fits)
    # Cross-fitted: every row's score comes from networks that never trained on it.
    scores = cross.scores if cross is not None else graph_scores(graph, x)

    cal_scores = scores[splits.calibration]
    tune_labels = labels[splits.tuning] if labels is not None else None
    thresholds = calibrate.compute_thresholds(specs, cal_scores, scores[splits.tuning], tune_labels)
    _note_quantile_resolution(thresholds, len(cal_scores))

    eval_labels = labels[splits.evaluation] if labels is not None else None
    evaluation = detection_metrics(scores[splits.evaluation], eval_labels, thresholds)
    evaluation["split"] = "evaluation"
    normal_eval = splits.evaluation if labels is None else splits.evaluation[labels[splits.evaluation] == 0]
    probe = normal_eval if len(normal_eval) >= 2 else splits.calibration
    identity = identity_check(lambda rows: graph_scores(graph, rows), x[probe], config.seed)
    evaluation["identity_check"] = identity
    if identity["copying"]:
        log.warning(
            "identity check: shuffled-column rows score %.2fx and noise %.2fx the error of real rows; "
            "the model reconstructs garbage about as well as data (it may be copying its input, or "
            "the features carry no shared structure). Try a smaller --coding-size.",
            identity["shuffled_ratio"],
            identity["noise_ratio"],
        )

    fp = fingerprint(x, feature_names)
    option_doc = {
        "fit": asdict(config),
        "thresholds": list(options.thresholds),
        "contaminated": options.contaminated,
    }
    version = (
        options.version
        or hashlib.sha256((fp + json.dumps(option_doc, sort_keys=True)).encode()).hexdigest()[:12]
    )
    duration_s = time.perf_counter() - started
    metadata = ModelMetadata(
        name=options.name,
        version=version,
        feature_names=list(feature_names),
        coding_size=int(config.coding_size or 0),
        thresholds=thresholds,
        score_distribution=calibrate.score_distribution(cal_scores),
        architecture={
            "kind": vae.KIND if config.architecture == "vae" else "dense_autoencoder",
            **(vae.architecture_fields(config) if config.architecture == "vae" else {}),
            "layer_sizes": fitted.model.sizes,
            "hidden": list(config.hidden or []),
            "coding_size": config.coding_size,
            "activation": config.activation,
            "tied_weights": config.tied_weights,
            "denoise_sigma": config.denoise_sigma,
            "members": len(member_fits),
            "member_layer_sizes": [f.model.sizes for f in member_fits],
            "weight_count": sum(f.model.weight_count() for f in member_fits),
            "parameter_count": sum(p.numel() for f in member_fits for p in f.model.parameters()),
            "scaler": "standard (mean / std; constant columns scaled by 1)",
            "score": (
                "mean of squared ZCA-whitened residuals (Mahalanobis distance / d; Ledoit-Wolf covariance "
                "of training and validation residuals)"
                if fitted.error_whitening is not None
                else "mean squared error in scaled space"
            )
            + (vae.SCORE_NOTE if config.architecture == "vae" else "")
            + (f", averaged over {len(member_fits)} networks" if len(member_fits) > 1 else ""),
            "undercomplete": all(f.model.sizes[-1] < d for f in member_fits),
        },
        training={
            "fingerprint_sha256": fp,
            "source": options.source,
            "rows": int(x.shape[0]),
            "labelled": labels is not None,
            "anomalies_in_data": int(labels.sum()) if labels is not None else None,
            "contaminated": options.contaminated,
            "split_rows": {**splits.counts(), "train_used": len(train_rows)},
            "crossfit": cross.describe() if cross is not None else None,
            **fit_summary(config, member_fits),
            "threshold_specs": list(options.thresholds),
            "duration_s": round(duration_s, 3),
        },
        evaluation=_json_safe(evaluation),
        versions=library_versions(),
        created_at=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    )
    result = TrainResult(
        path=None,
        metadata=metadata,
        fit=fitted,
        graph=graph,
        splits=splits,
        scores=scores,
        x=x,
        labels=labels,
        feature_names=list(feature_names),
        duration_s=time.perf_counter() - started,
        fit_seed=config.seed,
        member_fits=list(member_fits),
    )
    if out_path is not None:
        export_model(result, out_path)
    return result


def export_model(result: TrainResult, out_path: str | Path) -> Path:
    """Export a trained model to one ONNX file, with a torch-vs-onnxruntime parity check.

    Parameters
    ----------
    result : TrainResult
        From :func:`train_model`; its ``metadata`` (export section) and ``path`` are updated.
    out_path : str or Path
        Destination, written atomically.

    Returns
    -------
    Path
    """
    started = time.perf_counter()
    model_proto = to_onnx(result.graph, result.x.shape[1])
    export_info = check_parity(
        result.graph, model_proto, _parity_batch(result.x, result.splits, result.fit_seed)
    )
    export_info["exporter"] = EXPORTER
    export_info["opset"] = int(next((o.version for o in model_proto.opset_import if o.domain == ""), 0))
    extra_props: dict[str, str] = {}
    if result.metadata.architecture.get("kind") == vae.KIND:
        from training.vae_export import export_generator

        extra_props, export_info["generator"] = export_generator(
            result.graph, result.x.shape[1], result.fit_seed
        )
    export_info["export_s"] = round(time.perf_counter() - started, 3)
    result.metadata = replace(result.metadata, export=export_info)
    result.path = write_model(model_proto, result.metadata, out_path, extra_props)
    log.info("wrote %s (%s %s)", result.path, result.metadata.name, result.metadata.version)
    return result.path


def _note_quantile_resolution(thresholds: list[Threshold], n_calibration: int) -> None:
    for t in thresholds:
        tail = None
        if t.method == "quantile" and t.param is not None:
            tail = 1 - t.param
        elif t.method == "fpr" and t.param is not None:
            tail = t.param
        if tail is not None and tail * n_calibration < 1:
            log.info(
                "threshold '%s' (%s %g) needs at least %d calibration rows to be resolved; with %d it is "
                "the largest calibration score (train on more normal rows, or ask for a coarser %s)",
                t.name,
                t.method,
                t.param,
                math.ceil(1 / tail),
                n_calibration,
                t.method,
            )


def _json_safe(obj: Any) -> Any:
    """Replace NaN / Inf (which strict JSON refuses) with None, recursively."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
