"""`aeguard inspect MODEL [--json]`: show a model's metadata, readable or as JSON (no torch needed)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from service.artifact import (
    ModelMetadata,
    describe_networks,
    describe_parity,
    describe_threshold,
    describe_training,
    uses_tuning_split,
)
from service.scorer import Scorer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an ONNX model written by `aeguard train`")
    parser.add_argument("--json", action="store_true", help="print the metadata document as JSON")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _calibration_line(meta: ModelMetadata, n_calibration: int | None) -> str:
    """Calibration score quantiles, leaving out the tails the calibration rows cannot resolve.

    The stored quantiles interpolate between neighbouring scores, whereas quantile thresholds take
    the next score up; where fewer than 1 / (1 - q) rows exist the two differ widely (q0.999 of 975
    rows: an interpolation between the two largest scores against the largest one), so such a
    quantile would seem to contradict a threshold with the same name.
    """
    dist = dict(zip(meta.score_distribution.probabilities, meta.score_distribution.values, strict=True))
    picks = [
        p
        for p in (0.5, 0.9, 0.99, 0.999)
        if p in dist and (not n_calibration or (1 - p) * n_calibration >= 1)
    ]
    parts = [f"q{p:g} {dist[p]:.4g}" for p in picks]
    if 1.0 in dist:
        parts.append(f"max {dist[1.0]:.4g}")
    rows = f" ({n_calibration} held-out normal rows)" if n_calibration else ""
    return f"calibration    score{rows} " + ", ".join(parts)


def describe_window(window: dict[str, Any]) -> str:
    """A windowed model's rows -> samples, in words (what the batch job and the server will do)."""
    series = window.get("series_column")
    time = window.get("time_column")
    step, max_gap = window.get("step"), window.get("max_gap")
    parts = [
        f"{window.get('size')} consecutive rows per sample (the score belongs to the last; "
        f"the first {int(window.get('size', 1)) - 1} rows of a series have none)",
        f"series column {series!r}" if series else "one series",
        f"time column {time!r}" if time else "no time column (rows in input order)",
    ]
    if step:
        gap = f", a gap (window restarts) above {max_gap:g} steps" if max_gap else ""
        parts.append(f"step {step:g} s{gap}")
    if window.get("chosen_by"):
        parts.append(f"W chosen by {window['chosen_by']}")
    if "gaps" in window:
        parts.append(f"{window['gaps']} gap(s) in the training data")
    if window.get("rows_sorted"):
        parts.append("training rows were sorted by time")
    return "; ".join(parts)


def _training_lines(
    meta: ModelMetadata, tr: dict[str, Any] | None, split: dict[str, Any] | None
) -> list[str]:
    """Rows, settings, few-label counts, split sizes and cross-fitting of the training run."""
    lines: list[str] = []
    if tr:
        lines.append(f"training       {tr.get('rows')} rows from {tr.get('source') or '?'}")
        lines.append(
            f"               {describe_training(tr)}, seed {tr.get('seed')}, "
            f"{tr.get('duration_s')} s, fingerprint {str(tr.get('fingerprint_sha256', ''))[:16]}"
        )
    semi = tr.get("semi_supervised") if tr else None
    if semi:
        lines.append(
            f"few labels     {semi.get('labelled_anomalies')} labelled anomalies, "
            f"{semi.get('labelled_normal')} labelled normal, {semi.get('unlabelled')} unlabelled rows; "
            "thresholds calibrated on "
            f"{semi.get('calibrated_on')}"
        )
    if split:
        # The tuning split exists only for F1 thresholds; otherwise it is the calibration split again.
        tuning = ("tuning",) if uses_tuning_split(meta.thresholds) else ()
        order = ("train", "validation", "calibration", *tuning, "evaluation")
        lines.append("split          " + ", ".join(f"{k} {split[k]}" for k in order if k in split))
    crossfit = tr.get("crossfit") if tr else None
    if crossfit:
        lines.append(
            f"cross-fit      {crossfit.get('folds')} folds: thresholds and evaluation from out-of-fold scores"
        )
        lines.append(
            f"               served networks trained on {crossfit.get('final_train_rows')} rows, "
            f"each fold's on {crossfit.get('fold_train_rows')}"
        )
    return lines


def _evaluation_lines(meta: ModelMetadata) -> list[str]:
    """ROC-AUC, PR-AUC, each threshold's precision and recall, and the identity check."""
    lines: list[str] = []
    ev = meta.evaluation
    if ev:
        if "roc_auc" in ev:
            lines.append(
                f"evaluation     ROC-AUC {ev['roc_auc']:.4f}  PR-AUC {ev['pr_auc']:.4f} "
                f"on {ev.get('rows')} held-out rows"
            )
        per = ev.get("thresholds", {})
        for name in [t.name for t in meta.thresholds]:
            m = per.get(name, {})
            if "precision" in m:
                lines.append(
                    f"  {name:<12} precision {m['precision']:.3f} recall {m['recall']:.3f} F1 {m['f1']:.3f}"
                )
        ident = ev.get("identity_check")
        if ident:
            lines.append(
                f"identity check shuffled {ident['shuffled_ratio']:.1f}x, noise {ident['noise_ratio']:.1f}x "
                f"real error{' (WARNING: copying?)' if ident['copying'] else ''}"
            )
    return lines


def format_metadata(meta: ModelMetadata, source: str) -> str:
    """The metadata as aligned, readable lines."""
    lines = [
        f"model          {meta.name} {meta.version}  ({source})",
        f"created        {meta.created_at}  (schema {meta.schema_version})",
        f"features       {meta.n_features}: {', '.join(meta.feature_names)}",
        f"coding size    {meta.coding_size}",
    ]
    if meta.is_windowed:
        lines.append(f"window         {describe_window(meta.window)}")
    arch = meta.architecture
    if arch:
        lines.append(
            f"architecture   {describe_networks(arch)}  "
            f"(tied weights {arch.get('tied_weights')}, "
            f"denoise {arch.get('denoise_sigma')}, {arch.get('weight_count')} weights)"
        )
    tr = meta.training
    split = tr.get("split_rows") if tr else None
    n_calibration = split.get("calibration") if split else None
    lines.append("thresholds     (a score >= value is flagged; the lowest decides is_anomaly)")
    for t in meta.thresholds:
        lines.append(f"  {t.name:<12} {t.value:<12.6g} {describe_threshold(t, n_calibration)}")
    lines.append(_calibration_line(meta, n_calibration))
    lines += _training_lines(meta, tr, split)
    lines += _evaluation_lines(meta)
    if meta.export:
        opset = meta.export.get("opset")
        lines.append(f"export         opset {opset}; parity {describe_parity(meta.export)}")
        generator = meta.export.get("generator")
        if generator:  # a variational autoencoder: `aeguard sample` can generate rows from it
            lines.append(
                f"generator      `aeguard sample`: {generator['latent_size']} prior draws per row, "
                f"{generator['onnx_bytes']:,}-byte ONNX in metadata '{generator['metadata_key']}'; "
                f"max |torch - onnxruntime| {generator['parity_max_abs_diff']:.2g} on "
                f"{generator['parity_rows']} draws"
            )
    if meta.versions:
        lines.append(f"versions       {_fmt(meta.versions)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    scorer = Scorer.load(args.model)
    if args.json:
        print(json.dumps(json.loads(scorer.metadata.to_json()), indent=2, sort_keys=True))
    else:
        print(format_metadata(scorer.metadata, scorer.source))
    return 0
