"""The windowed kind's fit (issue 22): what differs from the row-wise fit, and nothing else.

The entry ``windowed`` of :data:`training.registry.ARCHITECTURES` names :func:`fit_windowed` as its
``fit`` hook; the pipeline (:func:`training.api.train_model`) does the rest as for every kind
(input checks, thresholds, evaluation, metadata, version, export and parity). What is this
kind's own: the graph (:class:`training.models.window.WindowedGraph`, channels derived from each
window and standardised inside the ONNX file), its loss (squared error of those channels, not of
the input), and the thresholds' scores: out-of-fold scores of time-blocked folds
(:mod:`training.data.window_splits`), where each fold's network never saw a row of the windows it
scores, and scored a later or earlier stretch of time than it learned from. docs/windows.md has
the design and its measurements.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np
import torch

from training import defaults
from training.data.window_splits import blocked_folds, train_validation
from training.data.windows import WindowedRows
from training.fitting.fit import FitConfig, FitResult, NetworkBuilder, fit_scaler, seed_everything
from training.models.window import ERROR_HINGE, LOG_OFFSET, WindowedGraph
from training.result import FitRequest, Fitted


def _prepare_graph(samples: np.ndarray, config: FitConfig, build: NetworkBuilder) -> WindowedGraph:
    """An untrained graph whose scalers come from the training windows ``[m, W, d]``."""
    _, w, d = samples.shape
    last = samples[:, -1].astype(np.float64)
    mean, scale = fit_scaler(last)
    steps = (samples[:, -1].astype(np.float64) - samples[:, -2]) / scale
    rms = np.sqrt((steps**2).mean(axis=0))
    seed_everything(config.seed)
    graph = WindowedGraph(build((w, d), config), w, d)
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


def fit_window_network(
    train: np.ndarray, validation: np.ndarray, config: FitConfig, build: NetworkBuilder
) -> tuple[WindowedGraph, FitResult]:
    """Fit a :class:`WindowedGraph` on windows ``train`` (``[m, W, d]``), early-stopping on ``validation``;
    the loss is the squared error of the derived channels. The fit's scaler is the last rows'."""
    graph = _prepare_graph(train, config, build)
    gen = seed_everything(config.seed)
    t_train = torch.from_numpy(_batched(graph.channels, train))
    t_val = torch.from_numpy(_batched(graph.channels, validation))
    net = graph.autoencoder
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    fit = FitResult(net, graph.mean.numpy().copy(), graph.scale.numpy().copy())
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
    return graph, fit


def window_scores(graph: WindowedGraph, samples: np.ndarray) -> np.ndarray:
    """Scores of windows ``[m, W, d]`` through the torch graph."""
    if len(samples) == 0:
        return np.zeros(0, dtype=np.float32)
    return _batched(lambda t: graph(t)[0], samples)


def crossfit_windows(
    rows: WindowedRows, trainable: np.ndarray, config: FitConfig, build: NetworkBuilder, folds: int
) -> tuple[np.ndarray, WindowedGraph, FitResult, dict[str, Any]]:
    """Out-of-fold scores of every window from time-blocked folds, then the served network on all
    trainable windows (the last tenth, in time, stops it early)."""
    started = time.perf_counter()
    oof = np.full(len(rows.ends), np.nan, dtype=np.float32)
    plan = blocked_folds(rows.ends, trainable, rows.spec.size, folds)
    epochs = []
    for fold in plan:
        graph, fitted = fit_window_network(
            rows.samples[fold.train], rows.samples[fold.validation], config, build
        )
        oof[fold.scored] = window_scores(graph, rows.samples[fold.scored])
        epochs.append(len(fitted.train_loss))
    fold_s = time.perf_counter() - started
    train, validation = train_validation(np.flatnonzero(trainable), rows.ends, rows.spec.size)
    graph, final = fit_window_network(rows.samples[train], rows.samples[validation], config, build)
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
    return oof, graph, final, info


def fit_windowed(request: FitRequest) -> Fitted:
    """The windowed entry's ``fit`` hook: out-of-fold scores of every window from time-blocked folds
    (``--crossfit-folds``, at least 2), and the served graph fitted on every trainable window
    (``splits.train``: the all-normal ones, or all when contaminated)."""
    rows: WindowedRows = request.samples.detail
    trainable = np.zeros(len(rows.ends), dtype=bool)
    trainable[request.splits.train] = True
    folds = max(2, request.options.crossfit_folds)
    oof, graph, final, cross = crossfit_windows(rows, trainable, request.config, request.build, folds)
    net = graph.autoencoder
    training = {
        "anomalies_in_data": None if rows.labels is None else int((rows.labels == 1).sum()),
        "windows": len(rows.ends),
        "trainable_windows": int(rows.all_normal().sum()),
        "crossfit": cross,
    }
    architecture = {
        "activation": net.activation_name,
        "tied_weights": False,
        "denoise_sigma": 0.0,
        "scaler": "standard (mean / std of the training windows' last rows; constant columns scaled by 1)",
        "score": "mean over features of the mean over each feature's channels of max(0, squared residual "
        f"- {ERROR_HINGE:g}), the residual in units of that channel's spread on training windows",
        "undercomplete": net.sizes[-1] < net.sizes[0],
    }
    evaluation = {
        "split": "every window, out-of-fold (time-blocked); the normal ones also set the thresholds"
    }
    return Fitted(graph, [final], oof, training, evaluation, architecture)
