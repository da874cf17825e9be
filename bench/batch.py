"""The batch job's figures for `make bench`: Parquet in -> Parquet out at d=32 against in-process onnxruntime.

``run_batch_bench()`` trains (once, cached in ``models/``) a 32-feature model with the real
trainer, writes Parquet inputs of 100 thousand and 5 million rows under a temporary directory
(pyarrow's default writer settings, 128 Ki-row row groups; removed afterwards), and runs
`aeguard score` on each in a child process, reading its peak RSS from ``os.wait4`` in a small
launcher process (see ``_LAUNCHER``). The
compute limit is the same model's :class:`~service.scorer.Scorer` in this process on the same
5 million rows, already in memory as a float32 matrix, in the same chunk size and thread count;
job and limit alternate, and their ratio is taken round by round.
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
#: Paired rounds of (large job, in-process limit).
ROUNDS = 3


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


#: Runs argv[2:], waits for it with wait4 and writes its peak RSS (KiB) to the file argv[1].
#: A fresh, small interpreter starts the job because Linux's ru_maxrss also counts the memory a
#: child had before exec, i.e. the parent's: started from this process (which holds the limit's
#: 5 M-row matrix), every job "peaked" at 1.9 GB.
_LAUNCHER = (
    "import os, subprocess, sys\n"
    "proc = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(proc.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def run_job(model: Path, source: Path, output: Path, chunk_rows: int) -> dict[str, Any]:
    """`aeguard score` in a child process: its JSON summary, wall time and peak RSS (MB)."""
    command = [sys.executable, "-m", "service.cli", "score", "--model", str(model), "--input", str(source)]
    command += ["--output", str(output), "--chunk-rows", str(chunk_rows), "--json", "--no-progress"]
    rss_file = output.with_name(output.name + ".maxrss")
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, str(rss_file), *command], capture_output=True, text=True
    )
    wall_s = time.perf_counter() - started
    if proc.returncode != 0:
        raise AeguardError(f"aeguard score failed on {source}:\n{proc.stderr[-2000:]}")
    peak_kib = int(rss_file.read_text())
    rss_file.unlink()
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "rows": summary["rows"],
        "rows_per_s": summary["rows_per_s"],
        "job_wall_s": summary["wall_s"],
        "process_wall_s": round(wall_s, 3),
        "peak_rss_mb": round(peak_kib / 1024, 1),  # Linux reports KiB
    }


class InProcessLimit:
    """The compute limit: the model's ``Scorer.score`` alone, over the file's rows held in memory."""

    def __init__(self, model: Path, source: Path, threads: int = 1) -> None:
        from service.scorer import Scorer

        self.scorer = Scorer.load(model, intra_op_threads=threads)
        parquet = pq.ParquetFile(source)
        d = self.scorer.metadata.n_features
        self.x = np.empty((parquet.metadata.num_rows, d), dtype=np.float32)
        start = 0
        for batch in parquet.iter_batches(
            batch_size=ROW_GROUP_ROWS, columns=self.scorer.metadata.feature_names
        ):
            end = start + batch.num_rows
            for j in range(d):
                self.x[start:end, j] = batch.column(j).to_numpy()
            start = end

    def rows_per_s(self, chunk_rows: int) -> float:
        """One pass over every row in chunks of ``chunk_rows``."""
        began = time.perf_counter()
        for first in range(0, len(self.x), chunk_rows):
            self.scorer.score(self.x[first : first + chunk_rows])
        return len(self.x) / (time.perf_counter() - began)


def run_batch_bench(
    small_rows: int = SMALL_ROWS,
    large_rows: int = LARGE_ROWS,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    model: Path | None = None,
    rounds: int = ROUNDS,
) -> dict[str, Any]:
    """Measure, print and return the batch job's figures (see the module docstring).

    The large job and the in-process limit alternate for ``rounds`` rounds, and the ratio is
    the median of the per-round ratios: each pair runs under the same load from other work on
    the machine. ``model`` defaults to the cached 32-feature model; any model works (the tests
    pass a tiny one and small row counts), the input columns being named after its features.
    """
    from service.scorer import Scorer

    with tempfile.TemporaryDirectory(prefix="aeguard-bench-batch-") as tmp:
        work = Path(tmp)
        model = model or ensure_model(work)
        names = Scorer.load(model).metadata.feature_names
        print(f"\nbatch job: Parquet -> Parquet, d={len(names)}, chunks of {chunk_rows} rows, 1 ORT thread")
        small = _write_parquet(work / "small.parquet", small_rows, names, seed=10)
        large = _write_parquet(work / "large.parquet", large_rows, names, seed=20)
        small_job = run_job(model, small, work / "small-out.parquet", chunk_rows)
        limit = InProcessLimit(model, large)
        large_jobs, limits = [], []
        for _ in range(rounds):
            large_jobs.append(run_job(model, large, work / "large-out.parquet", chunk_rows))
            (work / "large-out.parquet").unlink()
            limits.append(limit.rows_per_s(chunk_rows))
        del limit
    ratios = [job["rows_per_s"] / rate for job, rate in zip(large_jobs, limits, strict=True)]
    ratio = statistics.median(ratios)
    large_rss_mb = max(job["peak_rss_mb"] for job in large_jobs)
    result = {
        "model": str(model),
        "n_features": len(names),
        "chunk_rows": chunk_rows,
        "small_job": small_job,
        "large_jobs": large_jobs,
        "onnxruntime_rows_per_s": [round(r, 1) for r in limits],
        "batch_rows_per_s_median": statistics.median(job["rows_per_s"] for job in large_jobs),
        "onnxruntime_rows_per_s_median": round(statistics.median(limits), 1),
        "ratios": [round(r, 3) for r in ratios],
        "ratio_to_onnxruntime": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "ratio_met": ratio >= TARGET_RATIO,
        "peak_rss_mb_small": small_job["peak_rss_mb"],
        "peak_rss_mb_large": large_rss_mb,
        "target_peak_rss_mb": TARGET_PEAK_RSS_MB,
        "peak_rss_met": large_rss_mb < TARGET_PEAK_RSS_MB,
        "load_average_1m": os.getloadavg()[0],
    }
    print(f"  {'input':<24}{'rows/s':>12}{'job s':>9}{'process s':>11}{'peak RSS MB':>13}{'ORT rows/s':>13}")
    for job, rate in [(small_job, None), *zip(large_jobs, limits, strict=True)]:
        label = f"{job['rows']:,} rows"
        ort = "" if rate is None else f"{rate:,.0f}"
        print(
            f"  {label:<24}{job['rows_per_s']:>12,.0f}{job['job_wall_s']:>9.2f}"
            f"{job['process_wall_s']:>11.2f}{job['peak_rss_mb']:>13.1f}{ort:>13}"
        )
    verdict = {True: "met", False: "NOT met"}
    print(
        f"  target: batch / in-process onnxruntime on the same {large_rows:,} rows = {ratio:.2f} "
        f"(median of {rounds} paired rounds; >= {TARGET_RATIO}: {verdict[result['ratio_met']]})"
    )
    print(
        f"  target: peak RSS {small_job['peak_rss_mb']:.0f} MB on {small_rows:,} rows, "
        f"{large_rss_mb:.0f} MB on {large_rows:,} rows "
        f"(< {TARGET_PEAK_RSS_MB:.0f} MB: {verdict[result['peak_rss_met']]})"
    )
    return result
