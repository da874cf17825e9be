"""The short plain-text summary printed at the end of `aeguard train`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.artifact import (
    ModelMetadata,
    describe_networks,
    describe_parity,
    describe_threshold,
    describe_training,
    uses_tuning_split,
)
from training.fitting.crossfit import describe_crossfit

if TYPE_CHECKING:
    from training.result import TrainResult


def _fmt(v: float | None, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def _losses(train: dict[str, Any]) -> str:
    members = train.get("members") or []
    if len(members) > 1:
        pairs = " | ".join(f"{_fmt(m['train_loss'])} / {_fmt(m['validation_loss'])}" for m in members)
        return f"train / validation at each network's best epoch: {pairs}"
    return f"train {_fmt(train['train_loss'])} / validation {_fmt(train['validation_loss'])} (best epoch)"


def semi_supervised_rows(semi: dict | None) -> list[tuple[str, str]]:
    """The summary line of a `--semi-supervised` model: label counts and what calibrated it."""
    if not semi:
        return []
    return [
        (
            "few labels",
            f"{semi['labelled_anomalies']} labelled anomalies, {semi['labelled_normal']} labelled normal, "
            f"{semi['unlabelled']} unlabelled rows; thresholds calibrated on {semi['calibrated_on']}",
        )
    ]


def format_summary(result: TrainResult, report_index: Path | None = None) -> str:
    """A few aligned lines: model, data, splits, network, training, thresholds, quality, checks.

    Parameters
    ----------
    result : TrainResult
        The finished training run.
    report_index : Path, optional
        The report's index file, when one was written.

    Returns
    -------
    str
    """
    meta = result.metadata
    arch, train = meta.architecture, meta.training
    split = train["split_rows"]
    rows: list[tuple[str, str]] = [
        ("model", f"{meta.name} {meta.version} -> {result.path or '(not exported)'}"),
        (
            "data",
            f"{train['rows']} rows x {meta.n_features} features"
            + (f", {train['anomalies_in_data']} labelled anomalies" if train["labelled"] else ", no labels"),
        ),
        *semi_supervised_rows(train.get("semi_supervised")),
        (
            "split",
            f"train {split['train']} | validation {split['validation']} | calibration {split['calibration']}"
            f" | evaluation {split['evaluation']}"
            + (f" | tuning {split['tuning']}" if uses_tuning_split(meta.thresholds) else ""),
        ),
        (
            "network",
            describe_networks(arch) + f" (tied weights {'yes' if arch['tied_weights'] else 'no'}, "
            f"denoise {arch['denoise_sigma']:g}, {arch['weight_count']} weights)",
        ),
        ("training", f"{describe_training(train)}, {train['duration_s']:.1f} s"),
        ("loss", _losses(train)),
    ]
    crossfit_line = describe_crossfit(train.get("crossfit"))
    if crossfit_line:
        rows.insert(3, ("cross-fit", crossfit_line))  # right after the split it explains
    rows += _quality_rows(meta)
    if report_index is not None:
        rows.append(("report", str(report_index)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _quality_rows(meta: ModelMetadata) -> list[tuple[str, str]]:
    """The thresholds with their quality, ROC-AUC / PR-AUC, normal scores, identity check and parity."""
    ev, exp, split = meta.evaluation, meta.export, meta.training["split_rows"]
    out: list[tuple[str, str]] = []
    per = ev.get("thresholds", {})
    for i, t in enumerate(meta.thresholds):
        m = per.get(t.name, {})
        quality = (
            f"precision {_fmt(m['precision'], '.3f')} recall {_fmt(m['recall'], '.3f')}"
            f" F1 {_fmt(m['f1'], '.3f')}"
            if "precision" in m
            else f"flags {100 * m.get('flagged_rate', 0):.2f}% of held-out rows"
        )
        how = describe_threshold(t, split["calibration"])
        out.append(("thresholds" if i == 0 else "", f"{t.name:<10} {t.value:<11.5g} {how}: {quality}"))
    if "roc_auc" in ev:
        out.append(
            (
                "quality",
                f"ROC-AUC {ev['roc_auc']:.4f}  PR-AUC {ev['pr_auc']:.4f}  on {ev['rows']} held-out rows",
            )
        )
    normal = ev.get("normal_scores", {})
    if normal.get("count"):
        out.append(("normal score", f"median {_fmt(normal['median'])}  p99 {_fmt(normal['p99'])}"))
    ident = ev.get("identity_check")
    if ident:
        verdict = "WARNING: reconstructs garbage about as well as data" if ident["copying"] else "ok"
        out.append(
            (
                "identity check",
                f"shuffled columns {ident['shuffled_ratio']:.1f}x, noise {ident['noise_ratio']:.1f}x "
                f"the error of real rows: {verdict}",
            )
        )
    if exp:
        generator = exp.get("generator")
        out.append(
            (
                "parity",
                describe_parity(exp)
                + (
                    f"; generator max |diff| {generator['parity_max_abs_diff']:.2g} on "
                    f"{generator['parity_rows']} draws"
                    if generator
                    else ""
                ),
            )
        )
    return out
