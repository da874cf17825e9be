"""Benchmark execution: one fit-and-score per (dataset, seed, detector), in parallel worker processes.

Each worker gets an equal share of the cores (BLAS, OpenMP and torch threads capped), so fit times
compare detectors on equal terms whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from training.benchmark.data import Dataset, novelty_split
from training.benchmark.detectors import build_detector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """One fit of ``detector`` on ``dataset``'s novelty split number ``seed``."""

    dataset: Dataset
    seed: int
    detector: str


@dataclass(frozen=True)
class Result:
    """What one task measured; ``error`` is set (and the figures NaN) when the detector failed."""

    dataset: str
    seed: int
    detector: str
    roc_auc: float
    pr_auc: float
    fit_s: float  # wall-clock seconds
    fit_cpu_s: float  # CPU seconds of the worker process: robust to other load on the machine
    score_s: float
    n_train: int
    n_test: int
    error: str | None = None


def limit_threads(n_threads: int) -> None:
    """Cap BLAS/OpenMP and torch threads of this process at ``n_threads``."""
    from threadpoolctl import threadpool_limits

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n_threads)
    threadpool_limits(n_threads)
    try:
        import torch
    except ModuleNotFoundError:  # pragma: no cover - torch comes with the train extra
        return
    torch.set_num_threads(n_threads)


@contextlib.contextmanager
def quiet_trainer() -> Iterator[None]:
    """Keep the trainer's per-fit notes and advice out of the benchmark's log while fitting.

    Its advice is for `aeguard train` (e.g. "Try a smaller --coding-size", from the identity check,
    which random warm-up rows always fail): the benchmark runs the defaults and has no such option.
    Errors still show; the benchmark reports each fit's result itself.
    """
    trainer = logging.getLogger("training.pipeline")
    previous = trainer.level
    trainer.setLevel(logging.ERROR)
    try:
        yield
    finally:
        trainer.setLevel(previous)


def warm_up(n_threads: int, detectors: tuple[str, ...]) -> None:
    """Prepare a worker: cap its threads, then fit each detector once on a tiny random set.

    The first fit in a fresh process pays one-off costs (lazy imports, torch start-up, kernel
    selection); paying them here keeps them out of the measured fit times.
    """
    limit_threads(n_threads)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4))
    with quiet_trainer():
        for name in detectors:
            try:
                detector = build_detector(name, 0)
                detector.fit(x)
                detector.anomaly_score(x)
            except Exception:  # the real task reports the failure
                log.debug("warm-up of %s failed", name, exc_info=True)


def run_task(task: Task) -> Result:
    """Fit on the split's normal training rows, score the test rows, measure ROC-AUC and PR-AUC."""
    split = novelty_split(task.dataset.y, task.seed)
    x_train = task.dataset.x[split.train]
    x_test, y_test = task.dataset.x[split.test], task.dataset.y[split.test]
    try:
        detector = build_detector(task.detector, task.seed)
        t0, c0 = time.perf_counter(), time.process_time()
        with quiet_trainer():
            detector.fit(x_train)
        t1, c1 = time.perf_counter(), time.process_time()
        scores = detector.anomaly_score(x_test)
        t2 = time.perf_counter()
        if not np.isfinite(scores).all():
            raise ValueError(f"{int((~np.isfinite(scores)).sum())} non-finite scores")
        roc, pr = roc_auc_score(y_test, scores), average_precision_score(y_test, scores)
    except Exception as exc:  # a failing detector is a result to report, not a reason to stop
        log.debug("%s", traceback.format_exc())
        nan = float("nan")
        return Result(
            task.dataset.name, task.seed, task.detector, nan, nan, nan, nan, nan, len(x_train), len(x_test),
            error=f"{type(exc).__name__}: {exc}",
        )  # fmt: skip
    return Result(
        task.dataset.name, task.seed, task.detector, float(roc), float(pr), t1 - t0, c1 - c0, t2 - t1,
        len(x_train), len(x_test),
    )  # fmt: skip


def _cost(task: Task) -> float:
    """Rough relative cost, so the longest tasks start first and the workers finish together."""
    n, d = task.dataset.x.shape
    return n * (d + 10) * _WEIGHT.get(task.detector, 3)


#: Relative cost per row and feature (LUNAR trains 200 epochs on neighbour distances: the slowest).
_WEIGHT = {"iforest": 1, "ecod": 1, "lunar": 15, "deepsvdd": 5, "dif": 5}


def run_tasks(tasks: list[Task], jobs: int, threads_per_job: int) -> Iterator[Result]:
    """Run ``tasks`` on ``jobs`` worker processes (in this process when ``jobs`` is 1), yielding as done."""
    ordered = sorted(tasks, key=_cost, reverse=True)
    detectors = tuple(dict.fromkeys(task.detector for task in tasks))
    if jobs <= 1:
        warm_up(threads_per_job, detectors)
        for task in ordered:
            yield run_task(task)
        return
    # spawn, not fork: a forked child of a process that has started torch threads can deadlock.
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=get_context("spawn"), initializer=warm_up,
        initargs=(threads_per_job, detectors),
    ) as pool:  # fmt: skip
        futures = [pool.submit(run_task, task) for task in ordered]
        for future in as_completed(futures):
            yield future.result()


def run_benchmark(
    tasks: list[Task], jobs: int, threads_per_job: int, progress: Callable[[int, int, Result], None]
) -> list[Result]:
    """Run every task, calling ``progress(done, total, result)`` after each, and return all results."""
    results = []
    for result in run_tasks(tasks, jobs, threads_per_job):
        results.append(result)
        progress(len(results), len(tasks), result)
    return results
