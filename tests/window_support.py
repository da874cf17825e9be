"""A small but real windowed model for the serving tests, until the windowed trainer lands.

:func:`build_windowed_model` fits a tiny dense autoencoder over flattened windows ``[batch, W, d]``
with torch (150 Adam steps, a few seconds), exports it with the trainer's own exporter and parity
check (:mod:`training.export.onnx`), and writes it with the artifact contract's
``window`` section (service/artifact.py). Its outputs follow
the contract: ``score [b]`` = mean over features of ``feature_errors [b, d]`` (each feature's
squared scaled residual averaged over the window), ``codes [b, k]``, ``reconstruction [b, d]`` of
the window's last row in raw units. :func:`series_table` makes matching multi-series data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

TIME_COLUMN = "ts"
SERIES_COLUMN = "host"


def series_values(n_rows: int, n_features: int, phase: float, seed: int) -> np.ndarray:
    """One series' rows: sinusoids of period 12 steps, one phase per feature, small noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_rows)[:, None]
    offsets = np.arange(n_features)[None, :]
    x = (
        10
        + 3 * np.sin(2 * np.pi * t / 12 + phase + offsets)
        + 0.1 * rng.standard_normal((n_rows, n_features))
    )
    return x.astype(np.float32)


def series_table(
    n_series: int, n_rows: int, n_features: int, *, seed: int = 1, interleave: bool = True
) -> pa.Table:
    """``host``, ``ts`` (seconds, step 1), ``f0``.. for ``n_series`` series; rows interleaved in time."""
    hosts, times, values = [], [], []
    for s in range(n_series):
        hosts += [f"h{s}"] * n_rows
        times.append(np.arange(n_rows, dtype=np.float64) + 1_700_000_000)
        values.append(series_values(n_rows, n_features, phase=0.7 * s, seed=seed + s))
    ts, x = np.concatenate(times), np.concatenate(values)
    host = np.array(hosts, dtype=object)
    if interleave:
        order = np.lexsort((np.arange(len(ts)), ts))  # by time, then by series
        host, ts, x = host[order], ts[order], x[order]
    columns = {SERIES_COLUMN: pa.array(host, pa.string()), TIME_COLUMN: pa.array(ts)}
    columns |= {f"f{j}": pa.array(x[:, j]) for j in range(n_features)}
    return pa.table(columns)


def _graph(mean: np.ndarray, std: np.ndarray, size: int, d: int, coding: int, hidden: int):  # -> nn.Module
    import torch
    from torch import nn

    class WindowedAutoencoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean))
            self.register_buffer("std", torch.tensor(std))
            self.encoder = nn.Sequential(nn.Linear(size * d, hidden), nn.Tanh(), nn.Linear(hidden, coding))
            self.decoder = nn.Sequential(nn.Linear(coding, hidden), nn.Tanh(), nn.Linear(hidden, size * d))

        def forward(self, x: torch.Tensor):
            z = (x - self.mean) / self.std
            codes = self.encoder(z.flatten(1))
            recon = self.decoder(codes).reshape(-1, size, d)
            feature_errors = ((recon - z) ** 2).mean(dim=1)
            score = feature_errors.mean(dim=1)
            last = recon[:, -1, :] * self.std + self.mean
            return score, feature_errors, codes, last

    return WindowedAutoencoder()


def _fit(graph, windows: np.ndarray, steps: int, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)  # tiny matrices: more threads only contend on a shared machine
    opt = torch.optim.Adam(graph.parameters(), lr=1e-2)
    x = torch.from_numpy(windows)
    for _ in range(steps):
        opt.zero_grad()
        score, *_ = graph(x)
        score.mean().backward()
        opt.step()
    graph.eval()


def build_windowed_model(
    out: Path,
    *,
    n_features: int = 3,
    size: int = 5,
    coding: int = 2,
    hidden: int = 16,
    name: str = "win",
    steps: int = 150,
    seed: int = 0,
) -> Path:
    """Fit, export (parity-checked) and write a windowed model trained on :func:`series_values` data."""
    import torch

    from service.artifact import ModelMetadata, ScoreDistribution, Threshold
    from service.windows import WindowBuilder, WindowSpec
    from training.export.onnx import check_parity, to_onnx, write_model

    rows = np.concatenate([series_values(200, n_features, phase=0.7 * s, seed=100 + s) for s in range(3)])
    spec = WindowSpec(size=size, step=1.0, max_gap=3.0)
    windows = WindowBuilder(spec, n_features).add(rows, series=np.repeat(np.arange(3), 200)).samples
    flat = rows.astype(np.float64)
    mean, std = flat.mean(0).astype(np.float32), flat.std(0).astype(np.float32)
    graph = _graph(mean, std, size, n_features, coding, hidden)
    _fit(graph, windows, steps, seed)
    model = to_onnx(graph, (size, n_features))  # the trainer's own exporter, windowed input
    export = check_parity(graph, model, windows[:64])  # type: ignore[arg-type]  # any 4-output module
    with torch.no_grad():
        scores = graph(torch.from_numpy(windows))[0].numpy().astype(np.float64)
    probabilities = [0.0, 0.5, 0.9, 0.99, 1.0]
    metadata = ModelMetadata(
        name=name,
        version="1",
        feature_names=[f"f{j}" for j in range(n_features)],
        coding_size=coding,
        thresholds=[
            Threshold("warning", float(np.quantile(scores, 0.95)), "quantile", 0.95),
            Threshold("critical", float(np.quantile(scores, 0.999)), "quantile", 0.999),
        ],
        score_distribution=ScoreDistribution(probabilities, np.quantile(scores, probabilities).tolist()),
        architecture={
            "kind": "windowed_dense_autoencoder (test fixture)",
            "layer_sizes": [size * n_features, hidden, coding],
            "activation": "tanh",
            "tied_weights": False,
            "denoise_sigma": 0.0,
            "weight_count": sum(p.numel() for p in graph.parameters()),
        },
        export={**export, "opset": 18},
        window={
            "size": size,
            "time_column": TIME_COLUMN,
            "series_column": SERIES_COLUMN,
            "step": 1.0,
            "max_gap": 3.0,
            "chosen_by": "user",
        },
    )
    return write_model(model, metadata, out)
