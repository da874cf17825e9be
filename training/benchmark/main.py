"""`aeguard benchmark DIR`: detection quality of aeguard's defaults against peer detectors.

Every NPZ file (arrays ``X`` and ``y``) in DIR is one dataset. Per dataset and seed, every detector
is fitted on the same 60 % of the normal rows and tested on the other 40 % plus every anomaly
(the novelty setting). The result is a markdown report: ROC-AUC and PR-AUC per dataset and
detector, means, average rank and fit time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import logging
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from service.errors import InvalidInputError

if TYPE_CHECKING:
    from training.benchmark.run import Result, Task

log = logging.getLogger(__name__)

#: Where the benchmark's data lives when no directory is given on the command line.
DIR_VARIABLE = "AEGUARD_ADBENCH_DIR"
#: Where a user gets the data: said whenever the directory is missing.
WHERE_ADBENCH_IS = (
    "ADBench's classical data sets are .npz files (arrays X and y) in the ADBench repository, "
    "adbench/datasets/Classical/ (https://github.com/Minqi824/ADBench): clone or download that folder "
    f"and pass it as DIR or in {DIR_VARIABLE}"
)
DEFAULT_SEEDS = "0,1,2"
VERSIONED = ("aeguard", "numpy", "scikit-learn", "pyod", "torch", "onnxruntime", "onnx")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from training.benchmark.detectors import DETECTORS

    parser.add_argument(
        "directory",
        nargs="?",
        metavar="DIR",
        help=f"directory of NPZ files with X and y, e.g. ADBench's adbench/datasets/Classical/ "
        f"(default: ${DIR_VARIABLE})",
    )
    parser.add_argument("--out", type=Path, help="also write the markdown report to this file")
    parser.add_argument("--raw", type=Path, help="write every fit's figures to this CSV file")
    parser.add_argument(
        "--reuse",
        type=Path,
        action="append",
        metavar="RAW.csv",
        help="repeatable: take the fits this CSV (from --raw) holds instead of running them again; the "
        "report says how many were reused",
    )
    parser.add_argument(
        "--datasets", help="comma-separated dataset names to run (file stem or name without number prefix)"
    )
    parser.add_argument(
        "--seeds", default=DEFAULT_SEEDS, help=f"comma-separated split seeds (default {DEFAULT_SEEDS})"
    )
    parser.add_argument(
        "--detectors",
        default=",".join(DETECTORS),
        help=f"comma-separated detectors (default all: {','.join(DETECTORS)})",
    )
    parser.add_argument(
        "--max-rows", type=int, default=20_000, help="subsample larger datasets to this many rows, stratified"
    )
    parser.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes (default: up to 2)"
    )
    parser.add_argument(
        "--labelled-fraction",
        metavar="F[,F...]",
        help="few labels instead of novelty: ADBench's semi-supervised protocol with this fraction of the "
        "training anomalies labelled (e.g. 0.01,0.05,0.1); compares --semi-supervised, the same network "
        "from scratch, unsupervised aeguard and a gradient-boosted classifier (--detectors is ignored)",
    )


def _csv(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def data_directory(given: str | None) -> Path:
    """``given``, else ``$AEGUARD_ADBENCH_DIR``; a missing one is refused, saying where ADBench comes from."""
    text = given or os.environ.get(DIR_VARIABLE, "")
    if not text:
        raise InvalidInputError(f"no data directory: give DIR or set {DIR_VARIABLE}. {WHERE_ADBENCH_IS}")
    path = Path(text)
    if not path.is_dir():
        raise InvalidInputError(f"benchmark directory {path} does not exist. {WHERE_ADBENCH_IS}")
    return path


def _command(args: argparse.Namespace, detectors: list[str], seeds: list[int]) -> str:
    parts = ["aeguard", "benchmark", str(args.directory), "--seeds", ",".join(map(str, seeds))]
    parts += ["--detectors", ",".join(detectors), "--max-rows", str(args.max_rows), "--jobs", str(args.jobs)]
    if args.datasets:
        parts += ["--datasets", args.datasets]
    if args.out:
        parts += ["--out", str(args.out)]
    return shlex.join(parts)


def _versions() -> str:
    found = []
    for dist in VERSIONED:
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"Python {platform.python_version()}, " + ", ".join(found)


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "training", "service"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + (
        " (with uncommitted changes in training/ or service/)" if dirty.stdout else ""
    )


def _reused(paths: list[Path], tasks: list[Task]) -> dict[tuple[str, int, str], Result]:
    """The successful fits of ``tasks`` found in the raw CSVs ``paths`` (a later file wins)."""
    from training.benchmark.report import read_csv

    wanted = {(t.dataset.name, t.seed, t.detector) for t in tasks}
    found: dict[tuple[str, int, str], Result] = {}
    for path in paths:
        if not path.is_file():
            raise InvalidInputError(f"--reuse {path}: no such file")
        try:
            results = read_csv(path)
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidInputError(f"--reuse {path}: not a raw CSV from --raw ({exc})") from None
        for r in results:
            key = (r.dataset, r.seed, r.detector)
            if key in wanted and r.error is None:
                found[key] = r
    return found


def run(args: argparse.Namespace) -> int:
    from training.benchmark import report
    from training.benchmark.data import list_npz, load_dataset
    from training.benchmark.detectors import DETECTORS
    from training.benchmark.run import Task, run_benchmark

    args.directory = data_directory(args.directory)
    detectors, seeds = _check_run_args(args, list(DETECTORS))
    if args.labelled_fraction is not None:
        from training.benchmark import semi as benchmark_semi

        benchmark_semi.parse_fractions(args.labelled_fraction)  # refuse before loading any data
        datasets = [
            load_dataset(p, args.max_rows)
            for p in list_npz(Path(args.directory), _csv(args.datasets) or None)
        ]
        command = _command(args, ["-"], seeds).replace(" --detectors -", "")
        command += f" --labelled-fraction {args.labelled_fraction}"
        info = {"command": command, "commit": _git_commit(), "versions": _versions()}
        return benchmark_semi.run(args, datasets, seeds, info)

    datasets = [
        load_dataset(p, args.max_rows) for p in list_npz(Path(args.directory), _csv(args.datasets) or None)
    ]
    tasks = [Task(ds, seed, det) for ds in datasets for seed in seeds for det in detectors]
    reused = _reused(args.reuse or [], tasks)
    tasks = [t for t in tasks if (t.dataset.name, t.seed, t.detector) not in reused]
    # One thread per worker: CPU time then measures work, not idle threads spinning (a 2-thread torch
    # fit showed 18x the CPU seconds of a 1-thread one on a busy 2-core machine).
    threads = 1
    log.info(
        "benchmark: %d datasets x %d seeds x %d detectors = %d fits on %d worker(s), %d thread(s) each",
        len(datasets), len(seeds), len(detectors), len(tasks), args.jobs, threads,
    )  # fmt: skip

    started = dt.datetime.now(dt.UTC)
    results = list(reused.values()) + run_benchmark(tasks, args.jobs, threads, _progress)
    elapsed_s = (dt.datetime.now(dt.UTC) - started).total_seconds()

    summary = report.summarize(results, [ds.name for ds in datasets], detectors)
    header = _header(args, detectors, seeds, started, elapsed_s, threads)
    if reused:
        header.append(
            f"- Reused: {len(reused)} of {len(results)} fits come from "
            f"{', '.join(str(p) for p in args.reuse)} (`--reuse`), measured by an earlier run of the same "
            "protocol; the run time above covers the other fits only"
        )
    text = report.render_markdown(summary, datasets, results, header, {d: DETECTORS[d][1] for d in detectors})
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        log.info("report written to %s", args.out)
    if args.raw:
        report.write_csv(results, args.raw)
        log.info("raw results written to %s", args.raw)
    failed = sum(1 for r in results if r.error)
    if failed:
        log.warning("%d of %d fits failed; see the report's Failures section", failed, len(results))
    return 0 if failed < len(results) else 1


def _check_run_args(args: argparse.Namespace, known: list[str]) -> tuple[list[str], list[int]]:
    """The detectors and seeds asked for; refuses unknown detectors, bad seeds, jobs and row caps."""
    detectors = _csv(args.detectors)
    unknown = [d for d in detectors if d not in known]
    if unknown or not detectors:
        raise InvalidInputError(f"unknown detector(s) {unknown}; choose from {', '.join(known)}")
    try:
        seeds = [int(s) for s in _csv(args.seeds)]
    except ValueError as exc:
        raise InvalidInputError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from exc
    if not seeds:
        raise InvalidInputError("--seeds needs at least one seed")
    if args.jobs < 1 or args.max_rows < 10:
        raise InvalidInputError("--jobs must be >= 1 and --max-rows >= 10")
    return detectors, seeds


def _progress(done: int, total: int, r: Result) -> None:
    if r.error:
        log.warning("[%d/%d] %s seed %d %s FAILED: %s", done, total, r.dataset, r.seed, r.detector, r.error)
    else:
        log.info(
            "[%d/%d] %-12s seed %d %-8s ROC-AUC %.3f PR-AUC %.3f fit %.2f CPU s",
            done, total, r.dataset, r.seed, r.detector, r.roc_auc, r.pr_auc, r.fit_cpu_s,
        )  # fmt: skip


def _header(
    args: argparse.Namespace, detectors: list[str], seeds: list[int], started: dt.datetime, elapsed_s: float,
    threads: int,
) -> list[str]:  # fmt: skip
    """The report's opening lines: command, run, versions, machine, protocol, data."""
    from training.benchmark.data import TRAIN_FRACTION

    return [
        "# Detection quality",
        "",
        f"- Command: `{_command(args, detectors, seeds)}`",
        f"- Run: {started:%Y-%m-%d %H:%M} UTC, {elapsed_s / 60:.1f} min wall-clock, commit {_git_commit()}",
        f"- Versions: {_versions()}",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores; {args.jobs} worker process(es) with "
        f"{threads} thread(s) each, so fit times compare detectors on equal terms. Fit time is the worker's "
        "CPU time for `fit` (for aeguard: training, export to ONNX and loading it), which other load on the "
        "machine does not inflate; wall-clock figures are given too",
        f"- Protocol (novelty): per dataset and seed ({', '.join(map(str, seeds))}), a seeded "
        f"{TRAIN_FRACTION:.0%} of the normal rows is the training set for every detector; the test set is "
        f"the other {1 - TRAIN_FRACTION:.0%} plus every anomaly. Datasets over {args.max_rows:,} rows are "
        "subsampled first (stratified, fixed seed). Every detector runs with its default settings.",
        "- Data: every .npz file (arrays X and y) in the directory; ADBench's classical sets are the "
        "`adbench/datasets/Classical/` folder of https://github.com/Minqi824/ADBench",
        "- How aeguard's defaults were tuned on these sets, and how to read small differences: "
        "[training.md](training.md#defaults); cross-fitting, the deep peers (LUNAR, DeepSVDD, DIF) and what "
        "was tried for satellite, optdigits and mammography: [quality-tuning.md](quality-tuning.md)",
    ]


if __name__ == "__main__":  # pragma: no cover - `python -m training.benchmark.main` as a shortcut
    from service.cli import main

    sys.exit(main(["benchmark", *sys.argv[1:]]))
