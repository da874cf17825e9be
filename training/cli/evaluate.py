"""`aeguard evaluate MODEL DATA`: score a file through the serving scorer; report detection quality."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Define the `evaluate` options (no heavy imports here)."""
    parser.add_argument("model", help="an ONNX model written by `aeguard train`")
    parser.add_argument("data", help="CSV, Parquet or NPZ with the model's feature columns")
    parser.add_argument("--label-column", metavar="NAME", help="0 = normal, 1 = anomaly (CSV / Parquet)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def evaluate_file(model_path: str, data_path: str, label_column: str | None = None) -> dict:
    """Score ``data_path`` with the model through :class:`service.scorer.Scorer`; return the metrics.

    Parameters
    ----------
    model_path : str
        The ONNX model.
    data_path : str
        The data; CSV / Parquet columns are picked by the model's feature names.
    label_column : str, optional
        Labels for CSV / Parquet (NPZ files use ``y``).

    Returns
    -------
    dict
        :func:`training.calibration.evaluate.detection_metrics` plus ``model``, ``data``,
        ``severity_counts``.
    """
    from pathlib import Path

    import numpy as np

    from service.errors import DataError
    from service.scorer import Scorer
    from training.calibration.evaluate import detection_metrics
    from training.data.tables import load_dataset

    scorer = Scorer.load(model_path)
    meta = scorer.metadata
    is_npz = Path(data_path).suffix.lower() == ".npz"
    data = load_dataset(
        data_path,
        label_column=label_column,
        feature_columns=None if is_npz else meta.feature_names,
    )
    if data.feature_names != meta.feature_names:
        raise DataError(
            f"{data_path}: columns {data.feature_names[:8]} do not match the model's features "
            f"{meta.feature_names[:8]} ({meta.n_features} expected)"
        )
    scores, levels, windowed = _score(scorer, data.x, data_path)
    scored = np.isfinite(scores)
    labels = None if data.labels is None else data.labels[scored]
    metrics = detection_metrics(scores[scored], labels, meta.thresholds)
    if windowed is not None:
        metrics["windows"] = windowed
    names = ["none", *(t.name for t in meta.thresholds)]
    metrics["severity_counts"] = {names[i]: int((levels == i).sum()) for i in range(len(names))}
    metrics["model"] = {"name": meta.name, "version": meta.version, "path": str(model_path)}
    metrics["data"] = str(data_path)
    return metrics


def _score(scorer, x, data_path: str):  # -> (scores, levels, window info or None)
    """Every row's score: its own for a row-wise model; for a windowed one the score of the window
    ending at it (rows ordered by the model's time and series columns), NaN for warm-up rows."""
    import numpy as np

    if scorer.window is None:
        chunks = [scorer.score(x[i : i + 65536]) for i in range(0, x.shape[0], 65536)]
        return (
            np.concatenate([c.score for c in chunks]),
            np.concatenate([c.severity_level for c in chunks]),
            None,
        )
    from training.data.windows import model_context, score_rows

    context = model_context(data_path, scorer.window, data_path)
    scores, levels, gaps = score_rows(scorer, x, context)
    info = {"size": scorer.window.size, "warm_up_rows": int(np.isnan(scores).sum()), "gaps": gaps}
    return scores, levels, info


def format_metrics(m: dict) -> str:
    """Readable lines for :func:`evaluate_file`'s result."""
    lines = [
        f"model      {m['model']['name']} {m['model']['version']} ({m['model']['path']})",
        f"data       {m['data']}: {m['rows']} rows"
        + (f", {m['anomalies']} labelled anomalies" if "anomalies" in m else ""),
    ]
    if "windows" in m:
        w = m["windows"]
        lines.append(
            f"windows    {w['size']} rows per sample; {w['warm_up_rows']} warm-up row(s) without a score "
            f"(not counted below), {w['gaps']} gap(s)"
        )
    if "roc_auc" in m:
        lines.append(f"quality    ROC-AUC {m['roc_auc']:.4f}  PR-AUC {m['pr_auc']:.4f}")
    ns = m["normal_scores"]
    if ns.get("count"):
        lines.append(f"normal     {ns['count']} rows, score median {ns['median']:.4g}, p99 {ns['p99']:.4g}")
    lines.append("severity   " + ", ".join(f"{k} {v}" for k, v in m["severity_counts"].items()))
    for name, t in m["thresholds"].items():
        text = f"  {name:<10} >= {t['value']:<10.5g} flags {100 * t['flagged_rate']:.2f}%"
        if "precision" in t:
            text += f"  precision {t['precision']:.3f} recall {t['recall']:.3f} F1 {t['f1']:.3f}"
        lines.append(text)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json

    metrics = evaluate_file(args.model, args.data, args.label_column)
    print(json.dumps(metrics, indent=2, sort_keys=True) if args.json else format_metrics(metrics))
    return 0
