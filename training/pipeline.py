"""The training pipeline's steps, shared by every trainer: prepare, fit, score, calibrate, describe, export.

:func:`training.api.train_model` and :func:`training.api.train_semi_supervised` are short drivers
that call these steps in order; what differs per network kind comes from the architecture's entry
in :data:`training.registry.ARCHITECTURES` (network, metadata fields, export extras, report
panels, samples, splits, and the fit that wraps the network into its scoring graph), so no step
branches on a kind.
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.artifact import ModelMetadata, Threshold
from service.errors import InvalidInputError
from training import defaults
from training.calibration import thresholds as calibrate
from training.calibration.evaluate import detection_metrics, identity_check
from training.data.folds import CrossFitPlan
from training.data.samples import RowContext, Samples, SplitRequest
from training.data.splits import Splits, cap_train_rows
from training.data.tables import check_matrix
from training.export.onnx import EXPORTER, check_parity, to_onnx, write_model
from training.fitting.fit import EpochCallback, FitConfig, FitResult, fit_summary
from training.models.ae import ScoringGraph
from training.registry import Architecture, architecture
from training.result import FitRequest, TrainOptions, TrainResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """A training run once its inputs are checked: the rows, the samples and the resolved settings."""

    #: Raw rows ``[n, d]`` as given (fingerprinted for provenance).
    x: np.ndarray
    feature_names: list[str]
    #: What the network sees, from the architecture's ``samples`` hook.
    samples: Samples
    specs: list[calibrate.ThresholdSpec]
    config: FitConfig
    arch: Architecture
    options: TrainOptions
    started: float

    def split_request(self, tune_anomalies: bool | None = None) -> SplitRequest:
        """What the architecture's ``split`` hook needs for this run."""
        tune = any(s.method == "f1" for s in self.specs) if tune_anomalies is None else tune_anomalies
        return SplitRequest(
            n_samples=self.samples.x.shape[0], labels=self.samples.labels, seed=self.config.seed,
            folds=self.options.crossfit_folds, contaminated=self.options.contaminated, tune_anomalies=tune,
            detail=self.samples.detail,
        )  # fmt: skip

    def fit_request(
        self, splits: Splits, plan: CrossFitPlan | None, on_epoch: EpochCallback | None
    ) -> FitRequest:
        """What the architecture's ``fit`` hook needs for this run."""
        return FitRequest(self.samples, splits, plan, self.config, self.options, self.arch.build, on_epoch)


def prepare(
    x: np.ndarray,
    feature_names: list[str],
    labels: np.ndarray | None,
    options: TrainOptions,
    *,
    allow_unlabelled: bool = False,
    context: RowContext | None = None,
) -> Run:
    """Check the rows and labels, parse the threshold specs, resolve the settings, build the samples."""
    started = time.perf_counter()
    x, labels = check_matrix(x, feature_names, labels, allow_unlabelled=allow_unlabelled)
    specs = calibrate.parse_threshold_specs(options.thresholds)
    arch = architecture(options.fit.architecture)
    config = resolve_fit_config(arch.input_width(x.shape[1]), options.fit, options.allow_overcomplete)
    samples = arch.samples(x, labels, context or RowContext())
    set_threads()
    return Run(x, list(feature_names), samples, specs, config, arch, options, started)


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
    if min(sizes) < 1 or any(h < 1 for h in hidden):
        raise InvalidInputError(f"layer sizes must be >= 1, got hidden {hidden} and coding size {k}")
    _check_undercomplete(max(sizes), n_features, allow_overcomplete)
    _check_settings(config)
    if member_sizes is not None and len(member_sizes) != n_members:
        raise InvalidInputError(
            f"{len(member_sizes)} member coding sizes for {n_members} network(s) in {config.activation!r}"
        )
    return replace(config, hidden=hidden, coding_size=k, member_coding_sizes=member_sizes)


def _check_undercomplete(widest: int, n_features: int, allow_overcomplete: bool) -> None:
    if widest < n_features:
        return
    msg = (
        f"coding size {widest} is not smaller than the {n_features} input feature(s): an overcomplete "
        "autoencoder can learn to copy its input and then flags nothing"
    )
    if not allow_overcomplete:
        raise InvalidInputError(f"{msg}; choose --coding-size < {n_features} or pass --allow-overcomplete")
    log.warning("%s (allowed by --allow-overcomplete)", msg)


def _check_settings(config: FitConfig) -> None:
    unknown = defaults.unknown_activations(config.activation)
    if unknown:
        raise InvalidInputError(
            f"unknown activation(s) {', '.join(repr(a) for a in unknown)} in {config.activation!r}; "
            f"choose from {', '.join(defaults.ACTIVATION_NAMES)}, comma-separated for an ensemble"
        )
    if config.denoise_sigma < 0:
        raise InvalidInputError(f"denoise sigma must be >= 0, got {config.denoise_sigma}")
    architecture(config.architecture)  # refuses an unknown name, listing the registered ones
    if not (config.kl_weight >= 0 and math.isfinite(config.kl_weight)) or config.kl_warmup_epochs < 0:
        raise InvalidInputError(
            f"the KL weight must be finite and >= 0 and its warm-up >= 0 epochs, got {config.kl_weight} "
            f"and {config.kl_warmup_epochs}"
        )


def training_rows(rows: np.ndarray, seed: int) -> np.ndarray:
    """The training rows, capped at :data:`training.defaults.MAX_TRAIN_ROWS` by a seeded subsample."""
    capped = cap_train_rows(rows, seed)
    if len(capped) < len(rows):
        log.info("training on a seeded subsample of %d of %d rows", len(capped), len(rows))
    return capped


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


def graph_scores(graph: torch.nn.Module, x: np.ndarray, batch_rows: int = 8192) -> np.ndarray:
    """Scores of raw samples through a torch scoring graph (float32)."""
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


def set_threads() -> None:
    """Set torch's intra-op threads (:data:`training.defaults.TORCH_THREADS`, capped by the cores)."""
    torch.set_num_threads(max(1, min(defaults.TORCH_THREADS, os.cpu_count() or 1)))


def calibrate_and_evaluate(
    run: Run,
    scores: np.ndarray,
    splits: Splits,
    tune_labels: np.ndarray | None,
    eval_labels: np.ndarray | None,
) -> tuple[list[Threshold], dict[str, Any]]:
    """Thresholds from the calibration (and tuning) scores, and their quality on the evaluation split."""
    cal_scores = scores[splits.calibration]
    thresholds = calibrate.compute_thresholds(run.specs, cal_scores, scores[splits.tuning], tune_labels)
    _note_quantile_resolution(thresholds, len(cal_scores))
    evaluation = detection_metrics(scores[splits.evaluation], eval_labels, thresholds)
    evaluation["split"] = "evaluation"
    return thresholds, evaluation


def check_identity(score: Callable[[np.ndarray], np.ndarray], x: np.ndarray, seed: int) -> dict[str, Any]:
    """:func:`~training.calibration.evaluate.identity_check` of ``x``; warns when the model copies."""
    identity = identity_check(score, x, seed)
    if identity["copying"]:
        log.warning(
            "identity check: shuffled-column rows score %.2fx and noise %.2fx the error of real rows; "
            "the model reconstructs garbage about as well as data (it may be copying its input, or "
            "the features carry no shared structure). Try a smaller --coding-size.",
            identity["shuffled_ratio"],
            identity["noise_ratio"],
        )
    return identity


def architecture_section(run: Run, member_fits: list[FitResult], whitened: bool) -> dict[str, Any]:
    """The metadata's ``architecture`` section: the kind, its own fields, the networks and the score."""
    config, arch = run.config, run.arch
    width = int(np.prod(run.samples.x.shape[1:]))
    score = (
        "mean of squared ZCA-whitened residuals (Mahalanobis distance / d; Ledoit-Wolf covariance "
        "of training and validation residuals)"
        if whitened
        else "mean squared error in scaled space"
    )
    return {
        "kind": arch.kind,
        **arch.metadata_fields(config),
        "layer_sizes": member_fits[0].model.sizes,
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
        "score": score
        + arch.score_note
        + (f", averaged over {len(member_fits)} networks" if len(member_fits) > 1 else ""),
        "undercomplete": all(f.model.sizes[-1] < width for f in member_fits),
    }


@dataclass
class Outcome:
    """What a driver hands :func:`finish`: the fitted graph, its scores and what the metadata says of them."""

    graph: torch.nn.Module
    member_fits: list[FitResult]
    splits: Splits
    scores: np.ndarray
    thresholds: list[Threshold]
    evaluation: dict[str, Any]
    #: The metadata's ``architecture`` section (:func:`architecture_section`, maybe amended).
    architecture: dict[str, Any]
    #: The driver's own ``training`` entries (labels, splits, cross-fit or few-label details).
    training: dict[str, Any]
    #: Options besides the fit settings and thresholds that decide the model (hashed into its version).
    decided_by: dict[str, Any]
    #: The labels the result keeps for the report (``None``: none worth showing).
    labels: np.ndarray | None


def finish(run: Run, outcome: Outcome, out_path: str | Path | None) -> TrainResult:
    """Write the metadata, wrap the result, and export it when ``out_path`` is given."""
    options, config = run.options, run.config
    fp = fingerprint(run.x, run.feature_names)
    option_doc = {"fit": asdict(config), "thresholds": list(options.thresholds), **outcome.decided_by}
    version = (
        options.version
        or hashlib.sha256((fp + json.dumps(option_doc, sort_keys=True)).encode()).hexdigest()[:12]
    )
    metadata = ModelMetadata(
        name=options.name,
        version=version,
        feature_names=list(run.feature_names),
        coding_size=int(config.coding_size or 0),
        thresholds=outcome.thresholds,
        score_distribution=calibrate.score_distribution(outcome.scores[outcome.splits.calibration]),
        architecture=outcome.architecture,
        training={
            "fingerprint_sha256": fp,
            "source": options.source,
            "rows": int(run.x.shape[0]),
            **outcome.training,
            **fit_summary(config, outcome.member_fits),
            "threshold_specs": list(options.thresholds),
            "duration_s": round(time.perf_counter() - run.started, 3),
        },
        evaluation=json_safe(outcome.evaluation),
        window=dict(run.samples.window),
        versions=library_versions(),
        created_at=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    )
    result = TrainResult(
        path=None,
        metadata=metadata,
        fit=outcome.member_fits[0],
        graph=outcome.graph,  # type: ignore[arg-type]  # a ScoringGraph or one that extends it
        splits=outcome.splits,
        scores=outcome.scores,
        x=run.samples.x,
        labels=outcome.labels,
        feature_names=list(run.feature_names),
        duration_s=time.perf_counter() - run.started,
        fit_seed=config.seed,
        member_fits=list(outcome.member_fits),
        architecture=run.arch.name,
        rows=run.samples.rows,
    )
    if out_path is not None:
        export_model(result, out_path)
    return result


def _parity_batch(x: np.ndarray, splits: Splits, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    rows = np.concatenate([splits.calibration[:200], splits.evaluation[-56:]])
    real = x[rows]
    noise = real.mean(axis=0) + 3 * real.std(axis=0) * rng.standard_normal((8, *x.shape[1:]))
    parts = [real, noise.astype(np.float32)]
    if x.ndim > 2:  # samples of several rows: also one whose rows all repeat its last (a stuck sensor)
        parts.append(np.repeat(real[:1, -1:], x.shape[1], axis=1))
    return np.concatenate(parts).astype(np.float32)


def export_model(result: TrainResult, out_path: str | Path) -> Path:
    """Export a trained model to one ONNX file, with a torch-vs-onnxruntime parity check.

    Parameters
    ----------
    result : TrainResult
        From :func:`training.api.train_model`; its ``metadata`` (export section) and ``path`` are
        updated. The architecture's ``export_extras`` add their parts to the file.
    out_path : str or Path
        Destination, written atomically.

    Returns
    -------
    Path
    """
    started = time.perf_counter()
    sample_shape = tuple(result.x.shape[1:])
    model_proto = to_onnx(result.graph, sample_shape)
    export_info = check_parity(
        result.graph, model_proto, _parity_batch(result.x, result.splits, result.fit_seed)
    )
    export_info["exporter"] = EXPORTER
    export_info["opset"] = int(next((o.version for o in model_proto.opset_import if o.domain == ""), 0))
    extra_props: dict[str, str] = {}
    for key, extra in architecture(result.architecture).export_extras:
        props, export_info[key] = extra(result.graph, sample_shape, result.fit_seed)
        extra_props.update(props)
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


def json_safe(obj: Any) -> Any:
    """Replace NaN / Inf (which strict JSON refuses) with None, recursively."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
