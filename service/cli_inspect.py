"""`aeguard inspect MODEL [--json]`: show a model's metadata, readable or as JSON (no torch needed)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from service.artifact import ModelMetadata, describe_networks


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


def format_metadata(meta: ModelMetadata, source: str) -> str:
    """The metadata as aligned, readable lines."""
    lines = [
        f"model          {meta.name} {meta.version}  ({source})",
        f"created        {meta.created_at}  (schema {meta.schema_version})",
        f"features       {meta.n_features}: {', '.join(meta.feature_names)}",
        f"coding size    {meta.coding_size}",
    ]
    arch = meta.architecture
    if arch:
        lines.append(
            f"architecture   {describe_networks(arch)}  "
            f"(tied weights {arch.get('tied_weights')}, "
            f"denoise {arch.get('denoise_sigma')}, {arch.get('weight_count')} weights)"
        )
    lines.append("thresholds     (a score >= value is flagged; the lowest decides is_anomaly)")
    for t in meta.thresholds:
        param = "" if t.param is None else f" {t.param:g}"
        lines.append(f"  {t.name:<12} {t.value:<12.6g} {t.method}{param}")
    dist = dict(zip(meta.score_distribution.probabilities, meta.score_distribution.values, strict=True))
    picks = [p for p in (0.5, 0.9, 0.99, 0.999, 1.0) if p in dist]
    lines.append("calibration    score " + ", ".join(f"q{p:g} {dist[p]:.4g}" for p in picks))
    tr = meta.training
    if tr:
        lines.append(f"training       {tr.get('rows')} rows from {tr.get('source') or '?'}")
        lines.append(
            f"               {tr.get('epochs_run')} epochs (best {tr.get('best_epoch')}), "
            f"seed {tr.get('seed')}, "
            f"{tr.get('duration_s')} s, fingerprint {str(tr.get('fingerprint_sha256', ''))[:16]}"
        )
    split = tr.get("split_rows") if tr else None
    if split:
        order = ("train", "validation", "calibration", "tuning", "evaluation")
        lines.append("split          " + ", ".join(f"{k} {split[k]}" for k in order if k in split))
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
    if meta.export:
        lines.append(
            "export         parity max |torch - onnxruntime| "
            f"{meta.export.get('parity_max_abs_diff', 0):.3g}, "
            f"opset {meta.export.get('opset')}"
        )
    if meta.versions:
        lines.append(f"versions       {_fmt(meta.versions)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from service.scorer import Scorer

    scorer = Scorer.load(args.model)
    if args.json:
        print(json.dumps(json.loads(scorer.metadata.to_json()), indent=2, sort_keys=True))
    else:
        print(format_metadata(scorer.metadata, scorer.source))
    return 0
