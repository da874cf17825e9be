"""The batch job's figures for `make bench`: Parquet in -> Parquet out at d=32 against in-process onnxruntime.

``run_batch_bench()`` trains (once, cached in ``models/``) a 32-feature model with the real
trainer, writes Parquet inputs of 100 thousand and 5 million rows under a temporary directory
(pyarrow's default writer settings, 128 Ki-row row groups; removed afterwards), and runs
`aeguard score` on each in a child process, reading the child's peak RSS from ``os.wait4``. The
compute limit is the same model's :class:`~service.scorer.Scorer` in this process on the same
5 million rows, already in memory as a float32 matrix, in the same chunk size and thread count.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from service.batch.config import DEFAULT_CHUNK_ROWS
from service.errors import AeguardError

log = logging.getLogger(__name__)

N_FEATURES = 32
#: The cached model (git-ignored ``models/``), trained by `aeguard train` when missing.
MODEL_PATH = Path("models/bench-batch-d32.onnx")
SMALL_ROWS = 100_000
LARGE_ROWS = 5_000_000
ROW_GROUP_ROWS = 128 * 1024
#: The issue's targets.
TARGET_RATIO = 0.5
TARGET_PEAK_RSS_MB = 500.0
LIMIT_ROUNDS = 3


def _rows(n: int, d: int, seed: int) -> np.ndarray:
    """Correlated float32 rows: 4 latent factors mixed into ``d`` features, plus noise."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(0).standard_normal((4, d))
    x = rng.standard_normal((n, 4)) @ mixing + 0.1 * rng.standard_normal((n, d))
    return x.astype(np.float32)


def _write_parquet(path: Path, n: int, names: list[str], seed: int) -> Path:
    """``n`` rows in 128 Ki-row row groups, written chunk by chunk (never all in memory)."""
    schema = pa.schema([pa.field(name, pa.float32()) for name in names])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, n, ROW_GROUP_ROWS):
            x = _rows(min(ROW_GROUP_ROWS, n - start), len(names), seed + start)
            writer.write_table(pa.Table.from_arrays(list(x.T), schema=schema), row_group_size=ROW_GROUP_ROWS)
    return path


def ensure_model(work: Path) -> Path:
    """The cached 32-feature model, trained with `aeguard train` (a few epochs) when missing."""
    if MODEL_PATH.is_file():
        return MODEL_PATH
    data = _write_parquet(work / "train.parquet", 20_000, [f"f{j}" for j in range(N_FEATURES)], seed=1)
    MODEL_PATH.parent.mkdir(parents=True, exist_ok=True)
    log.info("training the batch benchmark's model into %s (once; later runs reuse it)", MODEL_PATH)
    command = [sys.executable, "-m", "service.cli", "train", str(data), "--out", str(MODEL_PATH)]
    command += ["--name", "bench-batch-d32", "--max-epochs", "8", "--no-progress"]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AeguardError(f"training the batch benchmark model failed:\n{proc.stderr[-2000:]}")
    return MODEL_PATH


def run_job(model: Path, source: Path, output: Path, chunk_rows: int) -> dict[str, Any]:
    """`aeguard score` in a child process: its JSON summary, wall time and peak RSS (MB)."""
    command = [sys.executable, "-m", "service.cli", "score", "--model", str(model), "--input", str(source)]
    command += ["--output", str(output), "--chunk-rows", str(chunk_rows), "--json", "--no-progress"]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        # wait4 reaps the child and returns its own resource usage (Popen.wait would discard it).
        _, status, usage = os.wait4(proc.pid, 0)
        wall_s = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise AeguardError(f"aeguard score failed on {source}:\n{stderr[-2000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {
        "rows": summary["rows"],
        "rows_per_s": summary["rows_per_s"],
        "job_wall_s": summary["wall_s"],
        "process_wall_s": round(wall_s, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
    }


def compute_limit(model: Path, source: Path, chunk_rows: int, threads: int = 1) -> float:
    """Rows/s of the model alone: ``Scorer.score`` over the file's rows held in memory (median of rounds)."""
    from service.scorer import Scorer

    scorer = Scorer.load(model, intra_op_threads=threads)
    parquet = pq.ParquetFile(source)
    d = scorer.metadata.n_features
    x = np.empty((parquet.metadata.num_rows, d), dtype=np.float32)
    start = 0
    for batch in parquet.iter_batches(batch_size=ROW_GROUP_ROWS, columns=scorer.metadata.feature_names):
        end = start + batch.num_rows
        for j in range(d):
            x[start:end, j] = batch.column(j).to_numpy()
        start = end
    rates = []
    for _ in range(LIMIT_ROUNDS):
        began = time.perf_counter()
        for first in range(0, len(x), chunk_rows):
            scorer.score(x[first : first + chunk_rows])
        rates.append(len(x) / (time.perf_counter() - began))
    return statistics.median(rates)


def run_batch_bench(
    small_rows: int = SMALL_ROWS,
    large_rows: int = LARGE_ROWS,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    model: Path | None = None,
) -> dict[str, Any]:
    """Measure, print and return the batch job's figures (see the module docstring).

    ``model`` defaults to the cached 32-feature model; any model works (the tests pass a tiny one
    and small row counts), the input columns being named after its features.
    """
    from service.scorer import Scorer

    with tempfile.TemporaryDirectory(prefix="aeguard-bench-batch-") as tmp:
        work = Path(tmp)
        model = model or ensure_model(work)
        names = Scorer.load(model).metadata.feature_names
        print(f"\nbatch job: Parquet -> Parquet, d={len(names)}, chunks of {chunk_rows} rows, 1 ORT thread")
        small = _write_parquet(work / "small.parquet", small_rows, names, seed=10)
        large = _write_parquet(work / "large.parquet", large_rows, names, seed=20)
        jobs = {
            "small": run_job(model, small, work / "small-out.parquet", chunk_rows),
            "large": run_job(model, large, work / "large-out.parquet", chunk_rows),
        }
        (work / "large-out.parquet").unlink()
        limit = compute_limit(model, large, chunk_rows)
    ratio = jobs["large"]["rows_per_s"] / limit
    result = {
        "model": str(model),
        "n_features": len(names),
        "chunk_rows": chunk_rows,
        "jobs": jobs,
        "onnxruntime_rows_per_s": round(limit, 1),
        "ratio_to_onnxruntime": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "ratio_met": ratio >= TARGET_RATIO,
        "target_peak_rss_mb": TARGET_PEAK_RSS_MB,
        "peak_rss_met": jobs["large"]["peak_rss_mb"] < TARGET_PEAK_RSS_MB,
        "load_average_1m": os.getloadavg()[0],
    }
    print(f"  {'input':<22}{'rows/s':>12}{'job s':>9}{'process s':>11}{'peak RSS MB':>13}")
    for job in jobs.values():
        label = f"{job['rows']:,} rows"
        print(
            f"  {label:<22}{job['rows_per_s']:>12,.0f}{job['job_wall_s']:>9.2f}"
            f"{job['process_wall_s']:>11.2f}{job['peak_rss_mb']:>13.1f}"
        )
    print(f"  in-process onnxruntime on the same {large_rows:,} rows: {limit:,.0f} rows/s")
    verdict = {True: "met", False: "NOT met"}
    print(
        f"  target: batch / onnxruntime = {ratio:.2f} (>= {TARGET_RATIO}: {verdict[result['ratio_met']]}); "
        f"peak RSS on {large_rows:,} rows {jobs['large']['peak_rss_mb']:.0f} MB "
        f"(< {TARGET_PEAK_RSS_MB:.0f} MB: {verdict[result['peak_rss_met']]})"
    )
    return result
