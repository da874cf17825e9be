"""Benchmark report: per-fit results aggregated into markdown tables (and a raw CSV for analysis)."""

from __future__ import annotations

import csv
import dataclasses
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from training.benchmark.data import Dataset
from training.benchmark.run import Result


@dataclasses.dataclass(frozen=True)
class Summary:
    """Results reduced to means: ``table[metric][dataset][detector]`` averaged over seeds."""

    datasets: list[str]
    detectors: list[str]
    table: dict[str, dict[str, dict[str, float]]]
    mean: dict[str, dict[str, float]]  # metric -> detector -> mean over datasets
    rank: dict[str, float]  # detector -> average rank of its ROC-AUC over datasets (1 = best)
    fit_total_s: dict[str, float]  # detector -> sum of fit CPU times over every fit


METRICS = ("roc_auc", "pr_auc", "fit_s", "fit_cpu_s", "score_s")


def summarize(results: Sequence[Result], datasets: list[str], detectors: list[str]) -> Summary:
    """Average each metric over seeds per dataset, then over datasets; rank detectors per dataset."""
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in results:
        for metric in METRICS:
            values[(metric, r.dataset, r.detector)].append(getattr(r, metric))
    table = {
        m: {ds: {det: _nanmean(values[(m, ds, det)]) for det in detectors} for ds in datasets}
        for m in METRICS
    }
    mean = {m: {det: _nanmean([table[m][ds][det] for ds in datasets]) for det in detectors} for m in METRICS}
    ranks: dict[str, list[float]] = defaultdict(list)
    for ds in datasets:
        # A failed detector ranks last on that dataset.
        auc = np.array([table["roc_auc"][ds][det] for det in detectors])
        for det, rank in zip(detectors, rankdata(-np.nan_to_num(auc, nan=-1.0)), strict=True):
            ranks[det].append(float(rank))
    fit_total = {det: float(np.nansum(values_of(results, det, "fit_cpu_s"))) for det in detectors}
    return Summary(
        datasets=datasets,
        detectors=detectors,
        table=table,
        mean=mean,
        rank={det: float(np.mean(ranks[det])) for det in detectors},
        fit_total_s=fit_total,
    )


def values_of(results: Sequence[Result], detector: str, metric: str) -> list[float]:
    return [getattr(r, metric) for r in results if r.detector == detector]


def _nanmean(xs: Sequence[float]) -> float:
    finite = [x for x in xs if not math.isnan(x)]
    return float(np.mean(finite)) if finite else float("nan")


def _fmt(value: float, digits: int = 3) -> str:
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _best_marked(values: Sequence[float], higher_is_better: bool, digits: int = 3) -> list[str]:
    """Format values, the best one in bold."""
    finite = [v for v in values if not math.isnan(v)]
    best = (max if higher_is_better else min)(finite) if finite else None
    return [f"**{_fmt(v, digits)}**" if best is not None and v == best else _fmt(v, digits) for v in values]


def metric_table(summary: Summary, metric: str, digits: int, higher_is_better: bool) -> list[str]:
    """One markdown table: a row per dataset, a column per detector, and a mean row."""
    lines = [_row(["dataset", *summary.detectors]), _row(["---", *["---:"] * len(summary.detectors)])]
    for ds in summary.datasets:
        vals = [summary.table[metric][ds][det] for det in summary.detectors]
        lines.append(_row([ds, *_best_marked(vals, higher_is_better, digits)]))
    means = [summary.mean[metric][det] for det in summary.detectors]
    lines.append(_row(["**mean**", *_best_marked(means, higher_is_better, digits)]))
    return lines


def summary_table(summary: Summary) -> list[str]:
    """One row per detector: the headline figures, best first by average rank."""
    order = sorted(summary.detectors, key=lambda det: (summary.rank[det], -summary.mean["roc_auc"][det]))
    lines = [
        _row(["detector", "mean ROC-AUC", "mean PR-AUC", "average rank (ROC-AUC)", "mean fit time (CPU s)",
              "total fit time (CPU s)", "mean fit time (wall s)", "mean scoring time (wall s)"]),
        _row(["---", "---:", "---:", "---:", "---:", "---:", "---:", "---:"]),
    ]  # fmt: skip
    for det in order:
        mean = summary.mean
        cells = [det, _fmt(mean["roc_auc"][det]), _fmt(mean["pr_auc"][det]), f"{summary.rank[det]:.2f}"]
        cells += [_fmt(mean["fit_cpu_s"][det], 2), f"{summary.fit_total_s[det]:.1f}"]
        cells += [_fmt(mean["fit_s"][det], 2), _fmt(mean["score_s"][det], 2)]
        lines.append(_row(cells))
    return lines


def dataset_table(datasets: Sequence[Dataset]) -> list[str]:
    """Rows, features and anomalies of each dataset as benchmarked; subsampled ones say so."""
    lines = [
        _row(["dataset", "rows used", "features", "anomalies", "anomaly %", "note"]),
        _row(["---", "---:", "---:", "---:", "---:", "---"]),
    ]
    for ds in datasets:
        note = f"subsampled from {ds.n_original:,} rows (stratified, fixed seed)" if ds.subsampled else ""
        n_anom = int(ds.y.sum())
        share = f"{100 * n_anom / len(ds.y):.2f}"
        lines.append(_row([ds.name, f"{len(ds.y):,}", str(ds.x.shape[1]), f"{n_anom:,}", share, note]))
    return lines


def render_markdown(
    summary: Summary,
    datasets: Sequence[Dataset],
    results: Sequence[Result],
    header: Sequence[str],
    descriptions: dict[str, str],
) -> str:
    """The whole report: ``header`` lines, headline summary, per-dataset tables, failures."""
    out = [*header, "", "## Summary", "", *summary_table(summary), ""]
    out += ["Detectors:", ""] + [f"- `{det}`: {descriptions.get(det, det)}" for det in summary.detectors]
    out += ["", "## ROC-AUC (mean over seeds)", "", *metric_table(summary, "roc_auc", 3, True)]
    out += [
        "",
        "## PR-AUC (average precision, mean over seeds)",
        "",
        *metric_table(summary, "pr_auc", 3, True),
    ]
    out += [
        "",
        "## Fit time in CPU seconds (mean over seeds)",
        "",
        *metric_table(summary, "fit_cpu_s", 2, False),
    ]
    out += ["", "## Datasets", "", *dataset_table(datasets)]
    failures = [r for r in results if r.error]
    if failures:
        out += ["", "## Failures", ""]
        out += [f"- {r.dataset} seed {r.seed} `{r.detector}`: {r.error}" for r in failures]
    return "\n".join(out) + "\n"


def write_csv(results: Sequence[Result], path: Path) -> None:
    """Every fit's figures, one row each, for analysis outside the report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = [f.name for f in dataclasses.fields(Result)]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in sorted(results, key=lambda r: (r.dataset, r.detector, r.seed)):
            writer.writerow(dataclasses.asdict(r))


def read_csv(path: Path) -> list[Result]:
    """The fits of a raw CSV written by :func:`write_csv` (failed fits included, figures NaN)."""
    fields = {f.name: f.type for f in dataclasses.fields(Result)}
    out = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            values: dict[str, object] = {}
            for name, kind in fields.items():
                text = row.get(name, "")
                if kind in ("int", int):
                    values[name] = int(text)
                elif kind in ("float", float):
                    values[name] = float(text) if text else math.nan
                elif name == "error":
                    values[name] = text or None
                else:
                    values[name] = text
            out.append(Result(**values))  # type: ignore[arg-type]
    return out
