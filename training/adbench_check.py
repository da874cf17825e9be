"""Default settings vs scikit-learn's IsolationForest on ADBench NPZ files (novelty split), as evidence.

``python -m training.adbench_check DIR [--max-rows 20000] [--seed 0] [NAME ...]`` prints a Markdown
table: per data set the autoencoder's ROC-AUC / PR-AUC with the default settings, IsolationForest's
in the same run, and the autoencoder's training time. The split: a seeded 60 % of the normal rows
trains (the pipeline further holds out validation and calibration rows from it); the other 40 %
plus every anomaly is the test set. Data sets above ``--max-rows`` are subsampled, stratified.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def novelty_split(y: np.ndarray, seed: int, train_fraction: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training rows (normal only) and test rows (other normals + all anomalies)."""
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(y == 0))
    n_train = round(train_fraction * len(normal))
    test = np.concatenate([normal[n_train:], np.flatnonzero(y == 1)])
    return np.sort(normal[:n_train]), np.sort(test)


def stratified_subsample(y: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """At most ``max_rows`` row indices keeping the anomaly rate (at least one anomaly)."""
    if len(y) <= max_rows:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    anomalies = np.flatnonzero(y == 1)
    normal = np.flatnonzero(y == 0)
    n_anom = max(1, round(max_rows * len(anomalies) / len(y)))
    keep = np.concatenate(
        [rng.choice(anomalies, n_anom, replace=False), rng.choice(normal, max_rows - n_anom, replace=False)]
    )
    return np.sort(keep)


def check_dataset(path: Path, max_rows: int, seed: int) -> dict:
    """Train the default autoencoder and an IsolationForest on one file; return the figures."""
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import average_precision_score, roc_auc_score

    from training.api import TrainOptions, graph_scores, train_model
    from training.data import load_dataset
    from training.fit import FitConfig

    data = load_dataset(path)
    assert data.labels is not None
    rows = stratified_subsample(data.labels, max_rows, seed)
    x, y = data.x[rows], data.labels[rows]
    train, test = novelty_split(y, seed)
    started = time.perf_counter()
    result = train_model(
        x[train], data.feature_names, None, options=TrainOptions(name=path.stem, fit=FitConfig(seed=seed))
    )
    ae_s = time.perf_counter() - started
    ae = graph_scores(result.graph, x[test])
    started = time.perf_counter()
    forest = IsolationForest(random_state=seed).fit(x[train])
    if_s = time.perf_counter() - started
    iso = -forest.score_samples(x[test])
    return {
        "dataset": path.stem,
        "rows": len(y),
        "features": x.shape[1],
        "anomalies": int(y.sum()),
        "ae_roc_auc": roc_auc_score(y[test], ae),
        "ae_pr_auc": average_precision_score(y[test], ae),
        "if_roc_auc": roc_auc_score(y[test], iso),
        "if_pr_auc": average_precision_score(y[test], iso),
        "ae_train_s": ae_s,
        "if_train_s": if_s,
        "epochs": result.metadata.training["epochs_run"],
        "coding_size": result.metadata.coding_size,
    }


def format_table(results: list[dict]) -> str:
    """Markdown table of :func:`check_dataset` results, with the means at the bottom."""
    head = (
        "| data set | rows | d | anomalies | AE ROC-AUC | IF ROC-AUC | AE PR-AUC | IF PR-AUC "
        "| AE train s | epochs | k |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in results:
        lines.append(
            f"| {r['dataset']} | {r['rows']} | {r['features']} | {r['anomalies']} | {r['ae_roc_auc']:.3f} | "
            f"{r['if_roc_auc']:.3f} | {r['ae_pr_auc']:.3f} | {r['if_pr_auc']:.3f} | {r['ae_train_s']:.1f} | "
            f"{r['epochs']} | {r['coding_size']} |"
        )
    if results:
        mean = {
            k: float(np.mean([r[k] for r in results]))
            for k in ("ae_roc_auc", "if_roc_auc", "ae_pr_auc", "if_pr_auc")
        }
        lines.append(
            f"| **mean** | | | | {mean['ae_roc_auc']:.3f} | {mean['if_roc_auc']:.3f} | "
            f"{mean['ae_pr_auc']:.3f} | {mean['if_pr_auc']:.3f} | | | |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="folder of ADBench .npz files")
    parser.add_argument("names", nargs="*", help="data set stems (default: all files)")
    parser.add_argument("--max-rows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    files = sorted(Path(args.directory).glob("*.npz"), key=lambda p: int(p.stem.split("_")[0]))
    if args.names:
        files = [f for f in files if f.stem in args.names or f.stem.split("_", 1)[-1] in args.names]
    results = []
    for f in files:
        r = check_dataset(f, args.max_rows, args.seed)
        print(
            f"{r['dataset']}: AE {r['ae_roc_auc']:.3f} IF {r['if_roc_auc']:.3f} ({r['ae_train_s']:.1f} s)",
            flush=True,
        )
        results.append(r)
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
