"""Windowed models' serving figures: the batch job against onnxruntime on the same windows, and the
server's CPU per row on ScoreStream (one row per message) against a row-wise model's.

``python -m bench.windows --model WINDOWED.onnx --rowwise-model ROWWISE.onnx``

1. **Batch job**: a Parquet input of ``--series`` series interleaved in time (the model's series and
   time columns, step 1 s, no gaps) goes through `aeguard score` in a child process (its peak RSS
   read as in :mod:`bench.batch`); the limit is the model's
   :class:`~service.scorer.Scorer` in this process on the same windows, built beforehand and held
   in memory, in chunks of the same size. Job and limit alternate; the ratio is the median of the
   per-round ratios (job rows/s over limit windows/s; the job's rows include each series' W-1
   warm-up rows, a few in a hundred thousand).
2. **ScoreStream, one row per message**: one `aeguard serve --processes 1` serves both models; a
   client streams ``--messages`` one-row messages, round-robin over ``--stream-series`` named series
   with timestamps for the windowed model, plain rows for the row-wise one. The server's CPU time
   (from /proc) per message is compared round by round, the two models alternating.

Both are ratios of interleaved rounds, so they hold on a shared machine better than absolute figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.batch import _rows, run_job
from bench.servers import ServerProcess
from service.scorer import Scorer
from service.windows import WindowBuilder

log = logging.getLogger(__name__)

#: The issue's targets.
TARGET_BATCH_RATIO = 0.8
TARGET_STREAM_CPU_RATIO = 1.5
T0 = 1_700_000_000.0


def write_series(
    path: Path, scorer: Scorer, n_rows: int, n_series: int
) -> tuple[Path, np.ndarray, np.ndarray]:
    """``n_rows`` rows of ``n_series`` series interleaved in time; also returns the rows and series keys."""
    window = scorer.metadata.window
    series_col, time_col = window.get("series_column") or "series", window.get("time_column") or "ts"
    x = _rows(n_rows, scorer.metadata.n_features, seed=3)
    keys = np.arange(n_rows) % n_series
    times = T0 + np.arange(n_rows) // n_series
    columns = {series_col: pa.array([f"s{k}" for k in keys]), time_col: pa.array(times.astype(np.float64))}
    columns |= {name: pa.array(x[:, j]) for j, name in enumerate(scorer.metadata.feature_names)}
    pq.write_table(pa.table(columns), path, row_group_size=128 * 1024)
    return path, x, keys


def windows_of(scorer: Scorer, x: np.ndarray, keys: np.ndarray, chunk_rows: int) -> list[np.ndarray]:
    """The job's windows, built once and held in memory as contiguous chunks of ``chunk_rows``."""
    assert scorer.window is not None
    samples = WindowBuilder(scorer.window, x.shape[1]).add(x, series=keys).samples
    return [np.ascontiguousarray(samples[i : i + chunk_rows]) for i in range(0, len(samples), chunk_rows)]


def batch_figures(model: Path, n_rows: int, n_series: int, chunk_rows: int, rounds: int, work: Path) -> dict:
    """The batch job's rows/s against onnxruntime's windows/s on the same windows, round by round."""
    scorer = Scorer.load(model)
    source, x, keys = write_series(work / "series.parquet", scorer, n_rows, n_series)
    chunks = windows_of(scorer, x, keys, chunk_rows)
    n_windows = sum(len(c) for c in chunks)
    jobs, limits = [], []
    for _ in range(rounds):
        jobs.append(run_job(model, source, work / "out.parquet", chunk_rows))
        (work / "out.parquet").unlink()
        began = time.perf_counter()
        for chunk in chunks:
            scorer.score(chunk)
        limits.append(n_windows / (time.perf_counter() - began))
    ratios = [job["rows_per_s"] / limit for job, limit in zip(jobs, limits, strict=True)]
    return {
        "rows": n_rows,
        "series": n_series,
        "windows": n_windows,
        "window_size": scorer.metadata.window_size,
        "n_features": scorer.metadata.n_features,
        "chunk_rows": chunk_rows,
        "job_rows_per_s": [job["rows_per_s"] for job in jobs],
        "job_peak_rss_mb": max(job["peak_rss_mb"] for job in jobs),
        "onnxruntime_windows_per_s": [round(v, 1) for v in limits],
        "ratios": [round(r, 3) for r in ratios],
        "ratio": round(statistics.median(ratios), 3),
        "target": TARGET_BATCH_RATIO,
    }


def _messages(x: np.ndarray, windowed: bool, n_series: int) -> Any:
    from service.client import SeriesRows

    for i in range(len(x)):
        if windowed:
            yield SeriesRows(x[i : i + 1], series=f"s{i % n_series}", timestamps=[T0 + i // n_series])
        else:
            yield x[i : i + 1]


def _stream_cpu_us(server: ServerProcess, model: str, x: np.ndarray, windowed: bool, n_series: int) -> float:
    """Server CPU µs per one-row message over one ScoreStream of ``len(x)`` messages."""
    from bench import procs
    from service.client import Client

    with Client(server.target) as client:
        for _ in client.score_stream(_messages(x[:200], windowed, n_series), model=model):
            pass  # warm the stream path and the model before measuring
        before = server.cpu_sample()
        count = sum(1 for _ in client.score_stream(_messages(x, windowed, n_series), model=model))
        after = server.cpu_sample()
    assert count == len(x)
    return procs.cpu_between(before, after) / len(x) * 1e6


def stream_figures(
    windowed: Path, rowwise: Path, n_messages: int, n_series: int, rounds: int, work: Path
) -> dict:
    """Server CPU per one-row ScoreStream message, windowed against row-wise, alternating round by round."""
    served = work / "models"
    served.mkdir()
    names = {}
    for kind, path in (("windowed", windowed), ("rowwise", rowwise)):
        shutil.copy(path, served / f"{kind}.onnx")
        names[kind] = Scorer.load(path).metadata.name
    d = {
        kind: Scorer.load(path).metadata.n_features
        for kind, path in (("windowed", windowed), ("rowwise", rowwise))
    }
    argv = [sys.executable, "-m", "service.cli", "serve", "--model", str(served), "--processes", "1"]
    argv += ["--port", "0", "--metrics-port", "0", "--host", "127.0.0.1", "--reload-interval-s", "0"]
    server = ServerProcess("aeguard", argv, work / "serve.log")
    cpu: dict[str, list[float]] = {"windowed": [], "rowwise": []}
    try:
        server.wait_serving()
        for _ in range(rounds):
            for kind in ("windowed", "rowwise"):
                x = _rows(n_messages, d[kind], seed=7)
                cpu[kind].append(_stream_cpu_us(server, names[kind], x, kind == "windowed", n_series))
    finally:
        server.stop()
    ratios = [w / r for w, r in zip(cpu["windowed"], cpu["rowwise"], strict=True)]
    return {
        "messages": n_messages,
        "stream_series": n_series,
        "windowed_cpu_us_per_row": [round(v, 1) for v in cpu["windowed"]],
        "rowwise_cpu_us_per_row": [round(v, 1) for v in cpu["rowwise"]],
        "ratios": [round(r, 3) for r in ratios],
        "ratio": round(statistics.median(ratios), 3),
        "target": TARGET_STREAM_CPU_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.windows", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="a windowed model (metadata window.size > 1)")
    p.add_argument(
        "--rowwise-model", type=Path, required=True, help="a row-wise model, for the stream's baseline"
    )
    p.add_argument("--rows", type=int, default=500_000, help="batch job input rows")
    p.add_argument("--series", type=int, default=50, help="series in the batch job's input")
    p.add_argument("--chunk-rows", type=int, default=32_768, help="batch job chunk size (and the limit's)")
    p.add_argument("--messages", type=int, default=5_000, help="one-row messages per stream and round")
    p.add_argument("--stream-series", type=int, default=10, help="series the windowed stream round-robins")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians of ratios reported")
    p.add_argument("--only", choices=["batch", "stream"], help="one part only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result: dict[str, Any] = {"load_average_1m": os.getloadavg()[0], "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="aeguard-bench-windows-") as tmp:
        work = Path(tmp)
        if args.only != "stream":
            result["batch"] = batch_figures(
                args.model, args.rows, args.series, args.chunk_rows, args.rounds, work
            )
            b = result["batch"]
            print(
                f"batch job, W={b['window_size']} d={b['n_features']}, "
                f"{b['rows']:,} rows of {b['series']} series: "
                f"{statistics.median(b['job_rows_per_s']):,.0f} rows/s vs onnxruntime "
                f"{statistics.median(b['onnxruntime_windows_per_s']):,.0f} windows/s: ratio {b['ratio']} "
                f"(rounds {b['ratios']}; target >= {TARGET_BATCH_RATIO}); peak RSS {b['job_peak_rss_mb']} MB"
            )
        if args.only != "batch":
            result["stream"] = stream_figures(
                args.model, args.rowwise_model, args.messages, args.stream_series, args.rounds, work
            )
            s = result["stream"]
            print(
                "ScoreStream, one row per message: server CPU "
                f"{statistics.median(s['windowed_cpu_us_per_row']):.0f} "
                f"µs/row windowed vs {statistics.median(s['rowwise_cpu_us_per_row']):.0f} row-wise: ratio "
                f"{s['ratio']} (rounds {s['ratios']}; target <= {TARGET_STREAM_CPU_RATIO})"
            )
    result["load_average_1m_end"] = os.getloadavg()[0]
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
