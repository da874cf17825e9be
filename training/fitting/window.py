"""`aeguard train --window W|auto`: fit, calibrate and export a windowed autoencoder (issue 22).

Rows are ordered by time within each series; each sample is the window of the ``W`` rows that end
at a row (:mod:`service.windows`); the network is :class:`training.window_model.WindowedGraph`.
Thresholds come from out-of-fold scores of time-blocked folds (:mod:`training.window_splits`):
each fold's network never saw a row of the windows it scores, and it scored a later or earlier
stretch of time than it learned from, so the thresholds already include how scores move as time
passes. docs/windows.md has the design and its measurements.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import io
import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import torch

from service import artifact
from service.artifact import ModelMetadata, describe_parity, describe_threshold
from service.cli_inspect import describe_window
from service.errors import DataError, InvalidInputError
from service.windows import DEFAULT_MAX_GAP, WindowBuilder, WindowSpec
from training import defaults
from training.calibration import thresholds as calibrate
from training.calibration.evaluate import detection_metrics
from training.data.tables import check_matrix
from training.data.window_splits import MIN_WINDOWS, blocked_folds, train_validation
from training.data.windows import (
    AUTO_ACF_LEVEL,
    AUTO_MAX_WINDOW,
    AUTO_MIN_WINDOW,
    MAX_WINDOW,
    RowContext,
    WindowedRows,
    time_order,
    usual_step,
)
from training.export.onnx import EXPORTER, OPSET, check_parity, write_model
from training.fitting.fit import FitConfig, fit_scaler, seed_everything
from training.models.ae import Autoencoder
from training.models.window import CHANNELS, ERROR_HINGE, LOG_OFFSET, WindowedGraph
from training.pipeline import fingerprint, json_safe, library_versions
from training.result import TrainOptions

log = logging.getLogger(__name__)

KIND = "windowed_autoencoder"
#: Thresholds of a windowed model when none are given (docs/windows.md, "Thresholds").
DEFAULT_THRESHOLDS: tuple[str, ...] = defaults.DEFAULT_THRESHOLDS


@dataclass(frozen=True)
class WindowOptions:
    """``--window``, ``--time-column``, ``--series-column`` and the gap rule."""

    size: int | str = "auto"
    max_gap: float = DEFAULT_MAX_GAP


def parse_window(text: str) -> int | str:
    """``--window``: a number of steps >= 2, or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        w = int(text)
    except ValueError:
        raise InvalidInputError(f"--window must be a number of steps >= 2 or 'auto', got {text!r}") from None
    if not 2 <= w <= MAX_WINDOW:
        raise InvalidInputError(f"--window must be between 2 and {MAX_WINDOW} steps, got {w}")
    return w


def choose_window(x: np.ndarray, run_starts: np.ndarray) -> tuple[int, dict[str, Any]]:
    """``--window auto``: per feature, the first lag at which the autocorrelation of its values
    (within the longest run) falls below :data:`AUTO_ACF_LEVEL`; W is the median over features,
    kept within [:data:`AUTO_MIN_WINDOW`, :data:`AUTO_MAX_WINDOW`] and below half the run."""
    bounds = [*run_starts.tolist(), len(x)]
    lengths = np.diff(bounds)
    i = int(np.argmax(lengths))
    run = x[bounds[i] : bounds[i + 1]].astype(np.float64)
    top = max(2, min(AUTO_MAX_WINDOW, len(run) // 2))
    lags = []
    for j in range(run.shape[1]):
        v = run[:, j] - run[:, j].mean()
        denom = float((v * v).sum())
        if denom <= 0:
            continue
        lag = top
        for k in range(1, top + 1):
            if float((v[:-k] * v[k:]).sum()) / denom < AUTO_ACF_LEVEL:
                lag = k
                break
        lags.append(lag)
    w = int(np.clip(round(float(np.median(lags))) if lags else AUTO_MIN_WINDOW, AUTO_MIN_WINDOW, top))
    w = max(2, min(w, top))
    info = {
        "rule": f"median over features of the first lag where the autocorrelation < {AUTO_ACF_LEVEL}, "
        f"within [{AUTO_MIN_WINDOW}, {AUTO_MAX_WINDOW}] and at most half the longest run",
        "lags": lags,
        "run_rows": int(lengths[i]),
    }
    return w, info


def window_rows(
    x: np.ndarray, labels: np.ndarray | None, context: RowContext, options: WindowOptions
) -> WindowedRows:
    """Sort the rows by (series, time), choose W when ``auto``, and build every window."""
    n = x.shape[0]
    order, was_sorted = time_order(n, context)
    xs = np.ascontiguousarray(x[order], dtype=np.float32)
    ys = None if labels is None else labels[order]
    times = None if context.times is None else context.times[order]
    series = None if context.series is None else context.series[order]
    if times is not None and series is None and len(times) > 1 and not (np.diff(times) > 0).all():
        dup = int((np.diff(times) == 0).sum())
        if dup:
            raise DataError(
                f"{dup} row(s) share a time with the row before; give --series-column if the file "
                "holds several series, or remove the duplicates"
            )
    step = usual_step(times, series)
    probe = WindowSpec(size=2, step=step, max_gap=options.max_gap)
    starts = _run_starts(n, times, series, probe)
    info: dict[str, Any] = {}
    if options.size == "auto":
        size, info = choose_window(xs, np.flatnonzero(starts))
    else:
        size = int(options.size)
    spec = WindowSpec(size, step, options.max_gap, context.time_column, context.series_column)
    built = WindowBuilder(spec, xs.shape[1]).add(xs, series=series, times=times)
    if len(built.rows) < 2 * MIN_WINDOWS:
        raise DataError(
            f"windows of {size} rows leave {len(built.rows)} samples from {n} rows "
            f"({built.gaps} gap(s)); give more rows or a smaller --window"
        )
    n_series = 1 if series is None else len(np.unique(series))
    return WindowedRows(
        xs, ys, order, spec, built.samples, built.rows, built.gaps, n_series, was_sorted, info
    )


def _run_starts(n: int, times: np.ndarray | None, series: np.ndarray | None, spec: WindowSpec) -> np.ndarray:
    """``[n]`` bool: True where a run of consecutive rows begins (a new series, or after a gap)."""
    starts = np.zeros(n, dtype=bool)
    starts[0] = True
    if series is not None:
        starts[1:] |= series[1:] != series[:-1]
    if times is not None and spec.gap_s is not None:
        starts[1:] |= np.diff(times) > spec.gap_s
    return starts


def _prepare_graph(samples: np.ndarray, config: FitConfig) -> WindowedGraph:
    """An untrained graph whose scalers come from the training windows ``[m, W, d]``."""
    _, w, d = samples.shape
    last = samples[:, -1].astype(np.float64)
    mean, scale = fit_scaler(last)
    steps = (samples[:, -1].astype(np.float64) - samples[:, -2]) / scale
    rms = np.sqrt((steps**2).mean(axis=0))
    n_in = len(CHANNELS) * d
    hidden = list(config.hidden) if config.hidden is not None else defaults.default_hidden(n_in)
    k = config.coding_size or defaults.default_coding_size(n_in)
    if k >= n_in:
        raise InvalidInputError(
            f"coding size {k} must be below the network's input width {n_in} ({len(CHANNELS)} x {d})"
        )
    activation = defaults.activation_list(config.activation)[0]
    seed_everything(config.seed)
    graph = WindowedGraph(Autoencoder(n_in, hidden, k, activation=activation), w, d)
    graph.mean.copy_(torch.from_numpy(mean))
    graph.scale.copy_(torch.from_numpy(scale))
    graph.step_scale.copy_(torch.from_numpy(np.where(rms > 1e-9, rms, 1.0).astype(np.float32)))
    graph.low.copy_(torch.from_numpy(last.min(axis=0).astype(np.float32)))
    graph.offset.copy_(torch.from_numpy((LOG_OFFSET * scale).astype(np.float32)))
    with torch.no_grad():
        raw = _batched(graph.raw_channels, samples)
    mu, sd = raw.mean(axis=0), raw.std(axis=0)
    graph.channel_mean.copy_(torch.from_numpy(mu.astype(np.float32)))
    graph.channel_scale.copy_(torch.from_numpy(np.where(sd > 1e-6, sd, 1.0).astype(np.float32)))
    return graph


def _batched(fn: Any, samples: np.ndarray, rows: int = 8192) -> np.ndarray:
    with torch.no_grad():
        parts = [
            fn(torch.from_numpy(np.ascontiguousarray(samples[i : i + rows])))
            for i in range(0, len(samples), rows)
        ]
    return torch.cat(parts).numpy()


@dataclass
class WindowFit:
    """One fitted windowed network and its learning curve."""

    graph: WindowedGraph
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False


def fit_window_network(train: np.ndarray, validation: np.ndarray, config: FitConfig) -> WindowFit:
    """Fit a :class:`WindowedGraph` on windows ``train`` (``[m, W, d]``), early-stopping on ``validation``."""
    graph = _prepare_graph(train, config)
    gen = seed_everything(config.seed)
    t_train = torch.from_numpy(_batched(graph.channels, train))
    t_val = torch.from_numpy(_batched(graph.channels, validation))
    net = graph.autoencoder
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    fit = WindowFit(graph)
    n = len(t_train)
    bs = max(1, min(config.batch_size, n))
    max_epochs = config.max_epochs
    if config.max_steps is not None:
        max_epochs = min(max_epochs, max(config.min_epochs, math.ceil(config.max_steps / math.ceil(n / bs))))
    best, best_state = math.inf, copy.deepcopy(net.state_dict())
    for epoch in range(1, max_epochs + 1):
        net.train()
        order = torch.randperm(n, generator=gen)
        running = 0.0
        for start in range(0, n, bs):
            batch = t_train[order[start : start + bs]]
            loss = ((net(batch) - batch) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            running += loss.item() * len(batch)
        net.eval()
        with torch.no_grad():
            val = float(((net(t_val) - t_val) ** 2).mean())
        fit.train_loss.append(running / n)
        fit.validation_loss.append(val)
        if val < best * (1 - defaults.MIN_DELTA) or epoch == 1:
            best, fit.best_epoch, best_state = val, epoch, copy.deepcopy(net.state_dict())
        if epoch - fit.best_epoch >= config.patience and epoch >= config.min_epochs:
            fit.stopped_early = True
            break
    net.load_state_dict(best_state)
    graph.eval()
    with torch.no_grad():
        both = torch.cat([t_train, t_val])
        rms = torch.sqrt(((net(both) - both) ** 2).mean(dim=0))
    graph.residual_scale.copy_(torch.clamp(rms, min=1e-3 * max(float(rms.max()), 1e-6)))
    return fit


def window_scores(graph: WindowedGraph, samples: np.ndarray) -> np.ndarray:
    """Scores of windows ``[m, W, d]`` through the torch graph."""
    if len(samples) == 0:
        return np.zeros(0, dtype=np.float32)
    return _batched(lambda t: graph(t)[0], samples)


@dataclass
class WindowTrainResult:
    """What a windowed training run produced."""

    path: Path | None
    metadata: ModelMetadata
    graph: WindowedGraph
    rows: WindowedRows
    #: Out-of-fold score per window (time-blocked folds): what calibration and evaluation used.
    scores: np.ndarray
    fit: WindowFit
    duration_s: float


def crossfit_windows(
    rows: WindowedRows, trainable: np.ndarray, config: FitConfig, folds: int
) -> tuple[np.ndarray, WindowFit, dict[str, Any]]:
    """Out-of-fold scores of every window from time-blocked folds, then the served network on all
    trainable windows (the last tenth, in time, stops it early)."""
    started = time.perf_counter()
    oof = np.full(len(rows.ends), np.nan, dtype=np.float32)
    plan = blocked_folds(rows.ends, trainable, rows.spec.size, folds)
    epochs = []
    for fold in plan:
        fitted = fit_window_network(rows.samples[fold.train], rows.samples[fold.validation], config)
        oof[fold.scored] = window_scores(fitted.graph, rows.samples[fold.scored])
        epochs.append(len(fitted.train_loss))
    fold_s = time.perf_counter() - started
    train, validation = train_validation(np.flatnonzero(trainable), rows.ends, rows.spec.size)
    final = fit_window_network(rows.samples[train], rows.samples[validation], config)
    info = {
        "folds": folds,
        "blocked": "contiguous blocks of windows in time (rows sorted by series, then time); a fold's "
        "network never trains on a window that shares a row with the block it scores",
        "fold_train_windows": [len(f.train) for f in plan],
        "fold_epochs": epochs,
        "final_train_windows": len(train),
        "final_validation_windows": len(validation),
        "fold_fit_s": round(fold_s, 3),
        "final_fit_s": round(time.perf_counter() - started - fold_s, 3),
    }
    return oof, final, info


def train_windowed(
    x: np.ndarray,
    feature_names: list[str],
    out_path: str | Path | None,
    *,
    labels: np.ndarray | None = None,
    context: RowContext | None = None,
    window: WindowOptions | None = None,
    options: Any = None,
) -> WindowTrainResult:
    """Fit a windowed autoencoder on the rows ``x`` and export it as one ONNX file.

    ``options`` is a :class:`training.api.TrainOptions` (fit settings, thresholds, name, folds);
    ``context`` the rows' time and series; ``window`` W (or ``auto``) and the gap rule.
    """

    started = time.perf_counter()
    options = options or TrainOptions()
    x, labels = check_matrix(x, feature_names, labels)
    specs = calibrate.parse_threshold_specs(options.thresholds)
    rows = window_rows(x, labels, context or RowContext(), window or WindowOptions())
    trainable = rows.all_normal() if not options.contaminated else np.ones(len(rows.ends), dtype=bool)
    config = replace(options.fit, architecture=defaults.ARCHITECTURE)
    folds = max(2, options.crossfit_folds)
    torch.set_num_threads(max(1, min(defaults.TORCH_THREADS, torch.get_num_threads())))
    oof, final, cross = crossfit_windows(rows, trainable, config, folds)
    w_labels = rows.window_labels()
    thresholds = calibrate.compute_thresholds(specs, oof[trainable], oof, w_labels)
    evaluation = detection_metrics(oof, w_labels, thresholds)
    evaluation["split"] = "every window, out-of-fold (time-blocked); the normal ones also set the thresholds"
    metadata = _metadata(
        rows, feature_names, final, config, options, thresholds, oof[trainable], evaluation, cross
    )
    metadata = replace(
        metadata,
        versions=library_versions(),
        training={
            **metadata.training,
            "fingerprint_sha256": fingerprint(x, feature_names),
            "duration_s": round(time.perf_counter() - started, 3),
        },
    )
    result = WindowTrainResult(None, metadata, final.graph, rows, oof, final, time.perf_counter() - started)
    if out_path is not None:
        export_windowed(result, out_path)
    return result


def _metadata(
    rows: WindowedRows,
    feature_names: list[str],
    final: WindowFit,
    config: FitConfig,
    options: Any,
    thresholds: list,
    calibration: np.ndarray,
    evaluation: dict[str, Any],
    cross: dict[str, Any],
) -> ModelMetadata:

    net = final.graph.autoencoder
    spec = rows.spec
    window = {
        "size": spec.size,
        "time_column": spec.time_column,
        "series_column": spec.series_column,
        "step": spec.step,
        "max_gap": spec.max_gap,
        "chosen_by": "auto" if rows.info else "user",
        "gaps": rows.gaps,
        "series": rows.n_series,
        "rows_sorted": not rows.was_sorted,
        **({"auto": rows.info} if rows.info else {}),
    }
    if spec.step is None:
        del window["step"]
    architecture = {
        "kind": KIND,
        "channels": list(CHANNELS),
        "layer_sizes": net.sizes,
        "hidden": net.sizes[1:-1],
        "coding_size": net.sizes[-1],
        "activation": net.activation_name,
        "tied_weights": False,
        "denoise_sigma": 0.0,
        "members": 1,
        "weight_count": net.weight_count(),
        "parameter_count": sum(p.numel() for p in net.parameters()),
        "scaler": "standard (mean / std of the training windows' last rows; constant columns scaled by 1)",
        "score": "mean over features of the mean over each feature's channels of max(0, squared residual "
        f"- {ERROR_HINGE:g}), the residual in units of that channel's spread on training windows",
        "undercomplete": net.sizes[-1] < net.sizes[0],
    }
    training = {
        "source": options.source,
        "rows": int(rows.x.shape[0]),
        "windows": len(rows.ends),
        "trainable_windows": int(rows.all_normal().sum()),
        "labelled": rows.labels is not None,
        "anomalies_in_data": None if rows.labels is None else int((rows.labels == 1).sum()),
        "contaminated": options.contaminated,
        "crossfit": cross,
        "seed": config.seed,
        "epochs_run": len(final.train_loss),
        "best_epoch": final.best_epoch,
        "stopped_early": final.stopped_early,
        "train_loss": final.train_loss[final.best_epoch - 1],
        "validation_loss": final.validation_loss[final.best_epoch - 1],
        "threshold_specs": list(options.thresholds),
    }
    return ModelMetadata(
        name=options.name,
        version=options.version or _version(rows, config, options),
        feature_names=list(feature_names),
        coding_size=int(net.sizes[-1]),
        thresholds=thresholds,
        score_distribution=calibrate.score_distribution(calibration),
        architecture=architecture,
        training=training,
        evaluation=json_safe(evaluation),
        created_at=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        window=window,
    )


def _version(rows: WindowedRows, config: FitConfig, options: Any) -> str:
    """A short hash of the windows' rows, W and the settings."""
    doc = json.dumps(
        {"fit": asdict(config), "thresholds": list(options.thresholds), "window": rows.spec.size},
        sort_keys=True,
        default=str,
    )
    h = hashlib.sha256(np.ascontiguousarray(rows.x).tobytes())
    h.update(doc.encode())
    return h.hexdigest()[:12]


def to_onnx_windowed(graph: WindowedGraph) -> Any:
    """Trace the windowed graph into an in-memory ONNX model: input ``[batch, W, d]``, dynamic batch."""

    graph.eval()
    example = torch.zeros(2, graph.window, graph.n_features, dtype=torch.float32)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            graph,
            (example,),
            buffer,  # type: ignore[arg-type]
            input_names=[artifact.INPUT_NAME],
            output_names=list(artifact.OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in [artifact.INPUT_NAME, *artifact.OUTPUT_NAMES]},
            opset_version=OPSET,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def parity_windows(rows: WindowedRows, seed: int) -> np.ndarray:
    """Windows for the parity check: real ones from across the data, a frozen one, and noisy ones."""
    rng = np.random.default_rng(seed + 1)
    pick = np.unique(np.linspace(0, len(rows.ends) - 1, min(256, len(rows.ends))).astype(int))
    real = rows.samples[pick]
    frozen = np.repeat(real[:1, -1:], rows.spec.size, axis=1)
    spread = rows.x.std(axis=0) + 1e-6
    noise = real[:8] + 3 * spread * rng.standard_normal(real[:8].shape)
    return np.concatenate([real, frozen, noise]).astype(np.float32)


def export_windowed(result: WindowTrainResult, out_path: str | Path) -> Path:
    """Export with the torch-vs-onnxruntime parity check on windows; write one ONNX file."""

    started = time.perf_counter()
    model = to_onnx_windowed(result.graph)
    info = check_parity(
        cast(Any, result.graph), model, parity_windows(result.rows, result.metadata.training["seed"])
    )
    info["exporter"] = EXPORTER
    info["opset"] = int(next((o.version for o in model.opset_import if o.domain == ""), 0))
    info["export_s"] = round(time.perf_counter() - started, 3)
    result.metadata = replace(result.metadata, export=info)
    result.path = write_model(model, result.metadata, out_path)
    log.info(
        "wrote %s (%s %s, windows of %d rows)",
        result.path,
        result.metadata.name,
        result.metadata.version,
        result.rows.spec.size,
    )
    return result.path


def format_window_summary(result: WindowTrainResult) -> str:
    """The lines printed after `aeguard train --window`."""

    meta = result.metadata
    arch, train, ev = meta.architecture, meta.training, meta.evaluation
    cross = train["crossfit"]
    lines = [
        ("model", f"{result.path} ({meta.name} {meta.version})"),
        ("window", describe_window(meta.window)),
        (
            "data",
            f"{train['rows']} rows -> {train['windows']} windows ({train['trainable_windows']} all-normal)",
        ),
        (
            "network",
            f"windowed, channels {', '.join(arch['channels'])}: "
            + " -> ".join(map(str, arch["layer_sizes"] + arch["layer_sizes"][-2::-1]))
            + f" {arch['activation']}",
        ),
        (
            "training",
            f"{train['epochs_run']} epochs (best {train['best_epoch']}); {cross['folds']} time-blocked "
            f"folds (fits {cross['fold_fit_s']:.1f} s, final {cross['final_fit_s']:.1f} s)",
        ),
    ]
    for t in meta.thresholds:
        lines.append((f"  {t.name}", f">= {t.value:.5g} ({describe_threshold(t)})"))
    if ev.get("roc_auc") is not None:
        lines.append(
            ("quality", f"ROC-AUC {ev['roc_auc']:.4f}  PR-AUC {ev['pr_auc']:.4f} (out-of-fold windows)")
        )
    if meta.export:
        lines.append(("parity", describe_parity(meta.export)))
    return "\n".join(f"{k:<10} {v}" for k, v in lines)
