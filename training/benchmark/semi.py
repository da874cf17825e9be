"""`aeguard benchmark --labelled-fraction F`: few labels, following ADBench's semi-supervised protocol.

Per dataset and seed, a stratified 70 % of the rows is the training set and 30 % the test set
(ADBench's split). A fraction ``F`` of the training anomalies is labelled (at least one; ADBench
rounds down, which leaves none on small sets); every other training row is unlabelled. Four
detectors see the same rows and labels:

- ``semi``: ``aeguard train --semi-supervised`` (pretraining on the unlabelled rows, then the
  anomaly head), exported to ONNX and scored by ``service.scorer``;
- ``scratch``: the same encoder and head from random weights, trained on the labels alone;
- ``unsupervised``: aeguard's default autoencoder on every training row, no labels;
- ``gbdt``: scikit-learn's HistGradientBoostingClassifier (balanced class weights) on the labels.

The label-using detectors treat unlabelled rows as normal, as ADBench does: with only anomalies
labelled there is no other negative class.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import logging
import platform
import tempfile
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import train_test_split

from service.errors import InvalidInputError
from training.benchmark import report
from training.benchmark.data import Dataset
from training.benchmark.run import Result, limit_threads
from training.data.tables import UNLABELLED

log = logging.getLogger(__name__)

#: Share of every dataset held out for testing (ADBench's semi-supervised protocol).
TEST_FRACTION = 0.3
#: The detectors compared, with the report's one-line description.
METHODS: dict[str, str] = {
    "semi": "`aeguard train --semi-supervised`: autoencoder pretrained on the training rows not labelled "
    "anomalous, encoder fine-tuned under the anomaly head; exported to ONNX, scored by service.scorer",
    "scratch": "the same encoder and head, random initial weights, trained on the labels alone (no "
    "pretraining, no reconstruction input), same steps",
    "unsupervised": "aeguard's default autoencoder on every training row, no labels; exported to ONNX",
    "gbdt": "scikit-learn HistGradientBoostingClassifier(class_weight='balanced') on the labels",
}


@dataclass(frozen=True)
class SemiSplit:
    """Row indices of one semi-supervised split: ``labelled`` (anomalies) is a subset of ``train``."""

    train: np.ndarray
    test: np.ndarray
    labelled: np.ndarray

    def partial_labels(self) -> np.ndarray:
        """Labels of the training rows as a detector sees them: 1 if labelled, else unknown."""
        y = np.full(len(self.train), UNLABELLED, dtype=np.int8)
        y[np.isin(self.train, self.labelled)] = 1
        return y


def semi_supervised_split(
    y: np.ndarray, seed: int, labelled_fraction: float, test_fraction: float = TEST_FRACTION
) -> SemiSplit:
    """A stratified train / test split with ``labelled_fraction`` of the training anomalies labelled.

    Parameters
    ----------
    y : numpy.ndarray
        True 0/1 labels of every row.
    seed : int
        Seeds the split and the choice of labelled anomalies.
    labelled_fraction : float
        In ``(0, 1]``; ``max(1, round(fraction * training anomalies))`` are labelled.
    test_fraction : float
        Share of rows (stratified) in the test set.

    Returns
    -------
    SemiSplit
    """
    if not 0 < labelled_fraction <= 1:
        raise InvalidInputError(f"--labelled-fraction must be in (0, 1], got {labelled_fraction}")
    rows = np.arange(len(y))
    train, test = train_test_split(rows, test_size=test_fraction, stratify=y, random_state=seed)
    anomalies = np.sort(train[y[train] == 1])
    n_labelled = max(1, round(labelled_fraction * len(anomalies)))
    labelled = np.random.default_rng(seed).choice(anomalies, n_labelled, replace=False)
    return SemiSplit(np.sort(train), np.sort(test), np.sort(labelled))


class _Method:
    """One detector of the comparison: ``fit(x, partial_labels)``, then higher-is-anomalous scores."""

    def __init__(self, name: str, seed: int) -> None:
        self.name, self.seed = name, seed
        self.model: Any = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        if self.name == "gbdt":
            from sklearn.ensemble import HistGradientBoostingClassifier

            # No early stopping: its stratified validation split needs 2 labelled anomalies, and 1 % of
            # a small set's anomalies is 1 (http and smtp failed that way, docs/semi-supervised.md).
            self.model = HistGradientBoostingClassifier(
                class_weight="balanced", early_stopping=False, random_state=self.seed
            )
            self.model.fit(x, (y == 1).astype(int))
        elif self.name == "scratch":
            from training.api import resolve_fit_config, set_threads
            from training.defaults import activation_list
            from training.fitting.fit import FitConfig
            from training.models.semi import FineTuneConfig, fit_scratch_classifier

            set_threads()
            config = resolve_fit_config(x.shape[1], FitConfig(seed=self.seed), allow_overcomplete=False)
            assert config.hidden is not None and config.coding_size is not None
            self.model = fit_scratch_classifier(
                x[y != 1], x[y == 1], config.hidden, config.coding_size,
                activation_list(config.activation)[0], FineTuneConfig(seed=self.seed),
            )  # fmt: skip
        else:
            from service.scorer import Scorer
            from training.api import TrainOptions, train_model
            from training.fitting.fit import FitConfig

            semi = self.name == "semi"
            options = TrainOptions(fit=FitConfig(seed=self.seed), semi_supervised=semi, name=self.name)
            with tempfile.TemporaryDirectory(prefix="aeguard-semi-bench-") as tmp:
                out = Path(tmp) / "model.onnx"
                train_model(
                    x, [f"f{i}" for i in range(x.shape[1])], out, labels=y if semi else None, options=options
                )
                self.model = Scorer.load(out)

    def anomaly_score(self, x: np.ndarray) -> np.ndarray:
        if self.name == "gbdt":
            return np.asarray(self.model.predict_proba(x)[:, 1], dtype=np.float64)
        if self.name == "scratch":
            from training.models.semi import logits

            return logits(self.model, x).astype(np.float64)
        return np.asarray(self.model.score(x).score, dtype=np.float64)


@dataclass(frozen=True)
class SemiTask:
    """One fit of ``method`` on ``dataset``'s split ``seed`` at ``fraction`` (None: any, for unsupervised)."""

    dataset: Dataset
    seed: int
    fraction: float | None
    method: str


def run_semi_task(task: SemiTask) -> tuple[SemiTask, Result]:
    """Fit on the split's training rows and partial labels; ROC-AUC and PR-AUC on the test rows."""
    split = semi_supervised_split(task.dataset.y, task.seed, task.fraction or 1.0)
    x_train, x_test = task.dataset.x[split.train], task.dataset.x[split.test]
    y_test = task.dataset.y[split.test]
    try:
        method = _Method(task.method, task.seed)
        t0, c0 = time.perf_counter(), time.process_time()
        method.fit(x_train, split.partial_labels())
        t1, c1 = time.perf_counter(), time.process_time()
        scores = method.anomaly_score(x_test)
        t2 = time.perf_counter()
        if not np.isfinite(scores).all():
            raise ValueError(f"{int((~np.isfinite(scores)).sum())} non-finite scores")
        roc, pr = float(roc_auc_score(y_test, scores)), float(average_precision_score(y_test, scores))
    except Exception as exc:  # a failing detector is a result to report, not a reason to stop
        log.debug("%s", traceback.format_exc())
        nan = float("nan")
        result = Result(task.dataset.name, task.seed, task.method, nan, nan, nan, nan, nan,
                        len(x_train), len(x_test), error=f"{type(exc).__name__}: {exc}")  # fmt: skip
        return task, result
    result = Result(task.dataset.name, task.seed, task.method, roc, pr, t1 - t0, c1 - c0, t2 - t1,
                    len(x_train), len(x_test))  # fmt: skip
    return task, result


def _run(tasks: list[SemiTask], jobs: int) -> Iterator[tuple[SemiTask, Result]]:
    ordered = sorted(tasks, key=lambda t: -t.dataset.x.size)  # longest first, so workers end together
    if jobs <= 1:
        limit_threads(1)
        yield from (run_semi_task(t) for t in ordered)
        return
    # spawn, not fork: a forked child of a process that has started torch threads can deadlock.
    with ProcessPoolExecutor(
        jobs, mp_context=get_context("spawn"), initializer=limit_threads, initargs=(1,)
    ) as pool:
        futures = [pool.submit(run_semi_task, t) for t in ordered]
        for future in as_completed(futures):
            yield future.result()


def _complete_datasets(summary: Any, methods: list[str]) -> list[str]:
    """Datasets on which every method has a ROC-AUC."""
    table = summary.table["roc_auc"]
    return [ds for ds in summary.datasets if all(not np.isnan(table[ds][m]) for m in methods)]


def parse_fractions(text: str) -> list[float]:
    """``"0.01,0.05,0.1"`` -> fractions, each in (0, 1]; one line naming the problem otherwise."""
    try:
        fractions = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise InvalidInputError(
            f"--labelled-fraction takes fractions like 0.01,0.05,0.1, got {text!r}"
        ) from None
    bad = [f for f in fractions if not 0 < f <= 1]
    if not fractions or bad:
        raise InvalidInputError(f"--labelled-fraction values must be in (0, 1], got {text!r}")
    return sorted(set(fractions))


def run(
    args: argparse.Namespace, datasets: list[Dataset], seeds: list[int], header_info: dict[str, str]
) -> int:
    """Run every method at every fraction, print (and write) the markdown report."""

    fractions = parse_fractions(args.labelled_fraction)
    methods = list(METHODS)
    tasks = [
        SemiTask(ds, seed, None if m == "unsupervised" else f, m)
        for ds in datasets
        for seed in seeds
        for m in methods
        for f in (fractions[:1] if m == "unsupervised" else fractions)
    ]
    log.info("semi-supervised benchmark: %d fits on %d worker(s)", len(tasks), args.jobs)
    started = dt.datetime.now(dt.UTC)
    per_fraction = _fit_all(tasks, fractions, args.jobs)
    elapsed_min = (dt.datetime.now(dt.UTC) - started).total_seconds() / 60
    names = [ds.name for ds in datasets]
    summaries = {f: report.summarize(per_fraction[f], names, methods) for f in fractions}
    lines = [
        "# Few labels: semi-supervised detection quality",
        "",
        f"- Command: `{header_info['command']}`",
        f"- Run: {started:%Y-%m-%d %H:%M} UTC, {elapsed_min:.1f} min wall-clock, "
        f"commit {header_info['commit']}",
        f"- Versions: {header_info['versions']}",
        f"- Machine: {platform.machine()}, {args.jobs} worker process(es) with 1 thread each",
        f"- Protocol (ADBench semi-supervised): per dataset and seed ({', '.join(map(str, seeds))}), a "
        f"stratified {1 - TEST_FRACTION:.0%} of the rows trains and {TEST_FRACTION:.0%} tests; the given "
        "fraction of the training anomalies is labelled (at least one), every other training row is "
        f"unlabelled. Datasets over {args.max_rows:,} rows are subsampled first (stratified, fixed seed). "
        "`unsupervised` uses no labels, so it is fitted once per dataset and seed and repeated in every "
        "fraction's table.",
        "",
        "## Mean ROC-AUC over the datasets",
        "",
        "| labelled fraction | " + " | ".join(methods) + " |",
        "| --- |" + " ---: |" * len(methods),
    ]
    for f in fractions:
        means = [summaries[f].mean["roc_auc"][m] for m in methods]
        lines.append(f"| {f:g} | " + " | ".join(report._best_marked(means, True)) + " |")
    lines += _complete_means(summaries, names, methods)
    lines += ["", "Detectors:", "", *[f"- `{m}`: {METHODS[m]}" for m in methods]]
    for f in fractions:
        lines += ["", f"## ROC-AUC at labelled fraction {f:g} (mean over seeds)", ""]
        lines += report.metric_table(summaries[f], "roc_auc", 3, True)
        lines += ["", f"## PR-AUC at labelled fraction {f:g} (mean over seeds)", ""]
        lines += report.metric_table(summaries[f], "pr_auc", 3, True)
    lines += ["", "## Fit time in CPU seconds (mean over seeds and fractions)", ""]
    all_results = [r for f in fractions for r in per_fraction[f]]
    lines += report.metric_table(report.summarize(all_results, names, methods), "fit_cpu_s", 2, False)
    lines += ["", "## Datasets", "", *report.dataset_table(datasets)]
    failures = [r for r in all_results if r.error]
    # The unsupervised fit is shared by every fraction: list each failure once.
    listed = list(dict.fromkeys((r.dataset, r.seed, r.detector, r.error) for r in failures))
    if listed:
        lines += [
            "",
            "## Failures",
            "",
            *[f"- {ds} seed {seed} `{det}`: {err}" for ds, seed, det, err in listed],
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.raw:
        _write_raw(args.raw, per_fraction)
    return 0 if len(failures) < len(all_results) else 1


def _fit_all(tasks: list[SemiTask], fractions: list[float], jobs: int) -> dict[float, list[Result]]:
    """Every task's result, under each fraction it stands for (an unsupervised fit: all of them)."""
    per_fraction: dict[float, list[Result]] = {f: [] for f in fractions}
    for i, (task, result) in enumerate(_run(tasks, jobs), 1):
        for f in fractions if task.fraction is None else [task.fraction]:
            per_fraction[f].append(result)
        log.info(
            "[%d/%d] %-12s seed %d %-12s %s ROC-AUC %.3f%s", i, len(tasks), task.dataset.name, task.seed,
            task.method, "any" if task.fraction is None else f"{task.fraction:g}", result.roc_auc,
            f" FAILED: {result.error}" if result.error else "",
        )  # fmt: skip
    return per_fraction


def _complete_means(summaries: dict[float, Any], names: list[str], methods: list[str]) -> list[str]:
    """When a detector failed somewhere: the means over the datasets where every detector has a result."""

    complete = {f: _complete_datasets(s, methods) for f, s in summaries.items()}
    if all(len(c) == len(names) for c in complete.values()):
        return []
    lines = ["", "A detector that failed on a dataset is left out of that mean. Over the datasets where "
             "every detector has a result:", ""]  # fmt: skip
    lines += ["| labelled fraction | datasets | " + " | ".join(methods) + " |"]
    lines += ["| --- | ---: |" + " ---: |" * len(methods)]
    for f, summary in summaries.items():
        table = summary.table["roc_auc"]
        means = [float(np.mean([table[ds][m] for ds in complete[f]])) for m in methods]
        cells = report._best_marked(means, True)
        lines.append(f"| {f:g} | {len(complete[f])} | " + " | ".join(cells) + " |")
    return lines


def _write_raw(path: Path, per_fraction: dict[float, list[Result]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)  # quotes error messages, which hold commas
        writer.writerow(["fraction", "dataset", "seed", "method", "roc_auc", "pr_auc", "fit_cpu_s", "error"])
        for f, results in per_fraction.items():
            for r in results:
                writer.writerow(
                    [f"{f:g}", r.dataset, r.seed, r.detector, r.roc_auc, r.pr_auc, r.fit_cpu_s, r.error]
                )
