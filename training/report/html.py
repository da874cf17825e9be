"""`--report DIR`: plots of a training run and an index.html that ties them together.

Figures: learning curves; score histograms of normal vs anomalous rows with the thresholds;
ROC and PR curves; per-feature errors; the first layer's weights (one panel per neuron); and for
each coding unit the training rows that activate it most; for a variational autoencoder, real vs
generated rows (:mod:`training.report.vae`).
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.artifact import describe_threshold
from training.registry import architecture
from training.report.summary import format_summary

if TYPE_CHECKING:
    from training.result import TrainResult

log = logging.getLogger(__name__)

#: At most this many neurons get a panel in the first-layer figure (largest weight norm first).
MAX_NEURON_PANELS = 32
#: Training rows shown per coding unit.
TOP_ROWS = 5
_NORMAL_COLOR = "#4C72B0"
_ANOMALY_COLOR = "#DD5555"
_THRESHOLD_COLORS = ["#E69F00", "#B2182B", "#6A3D9A", "#333333"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3, "font.size": 10})
    return plt


def _save(fig: Any, path: Path) -> str:
    fig.savefig(path, bbox_inches="tight")
    _pyplot().close(fig)
    return path.name


def plot_learning_curves(result: TrainResult, path: Path) -> str:
    """Save :func:`learning_curves_figure` to ``path``; return the file name."""
    return _save(learning_curves_figure(result), path)


def learning_curves_figure(result: TrainResult) -> Any:
    """Train and validation loss per epoch, with the restored best epoch marked: one panel per network.

    An ensemble's networks train one after another, each to its own early stop, so each gets its
    own panel (the first network's curves alone would describe a third of the model).
    """
    plt = _pyplot()
    fits = result.member_fits or [result.fit]
    activations = [a.strip() for a in str(result.metadata.architecture.get("activation", "")).split(",")]
    fig, axes = plt.subplots(
        1, len(fits), figsize=(7 if len(fits) == 1 else 4.2 * len(fits), 4), squeeze=False
    )
    arch = architecture(result.architecture)
    for i, (fit, ax) in enumerate(zip(fits, axes.flat, strict=True)):
        epochs = np.arange(1, len(fit.train_loss) + 1)
        ax.plot(epochs, fit.train_loss, label="train", color=_NORMAL_COLOR)
        ax.plot(epochs, fit.validation_loss, label="validation", color="#55A868")
        ax.axvline(fit.best_epoch, color="#888888", ls="--", lw=1, label=f"best epoch ({fit.best_epoch})")
        ax.set_yscale(arch.loss_scale)
        ax.set_xlabel("epoch")
        if len(fits) > 1:
            act = activations[i] if i < len(activations) else ""
            ax.set_title(f"network {i + 1} of {len(fits)} ({act})".replace(" ()", ""), fontsize=10)
        if i == 0:
            ax.set_ylabel(arch.loss_label)
        ax.legend(fontsize=8)
    fig.suptitle("Learning curves" + (f": each of the {len(fits)} networks" if len(fits) > 1 else ""))
    fig.tight_layout()
    return fig


def _normal_anomalous(result: TrainResult) -> tuple[np.ndarray, np.ndarray]:
    ev = result.splits.evaluation
    if result.labels is None:
        return result.scores[ev], result.scores[ev][:0]
    y = result.labels[ev]
    return result.scores[ev][y == 0], result.scores[ev][y == 1]


def plot_score_histogram(result: TrainResult, path: Path) -> str:
    """Held-out scores of normal and anomalous rows on a log axis, thresholds as vertical lines."""
    plt = _pyplot()
    normal, anomalous = _normal_anomalous(result)
    everything = np.concatenate([normal, anomalous])
    positive = everything[everything > 0]
    floor = max(float(positive.min()) if positive.size else 1e-6, 1e-9)
    lo, hi = np.log10(floor), np.log10(max(float(everything.max()), floor * 10))
    bins = np.logspace(lo, hi + 1e-9, 60)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.hist(
        np.maximum(normal, floor), bins=bins, alpha=0.6, color=_NORMAL_COLOR, label=f"normal ({len(normal)})"
    )
    if len(anomalous):
        ax.hist(
            np.maximum(anomalous, floor),
            bins=bins,
            alpha=0.6,
            color=_ANOMALY_COLOR,
            label=f"anomalous ({len(anomalous)})",
        )
    for i, t in enumerate(result.metadata.thresholds):
        color = _THRESHOLD_COLORS[i % len(_THRESHOLD_COLORS)]
        param = "" if t.param is None else f" {t.param:g}"
        ax.axvline(t.value, color=color, lw=2, ls="--", label=f"{t.name} = {t.value:.3g} ({t.method}{param})")
    ax.set_xscale("log")
    ax.set_xlabel("anomaly score (reconstruction error, log scale; higher = more anomalous)")
    ax.set_ylabel("rows")
    ax.set_title("Held-out scores: rows right of a dashed line are flagged at that level")
    ax.legend(fontsize=9)
    return _save(fig, path)


def plot_roc_pr(result: TrainResult, path: Path) -> str | None:
    """ROC and precision-recall curves on the evaluation split (labelled data only)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    ev = result.splits.evaluation
    if result.labels is None or len(np.unique(result.labels[ev])) < 2:
        return None
    plt = _pyplot()
    y, s = result.labels[ev], result.scores[ev]
    fpr, tpr, _ = roc_curve(y, s)
    precision, recall, _ = precision_recall_curve(y, s)
    metrics = result.metadata.evaluation
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
    a.plot(fpr, tpr, color=_NORMAL_COLOR, lw=2, label=f"autoencoder (AUC {metrics['roc_auc']:.3f})")
    a.plot([0, 1], [0, 1], color="#999999", ls=":", label="chance")
    b.plot(recall, precision, color=_NORMAL_COLOR, lw=2, label=f"autoencoder (AP {metrics['pr_auc']:.3f})")
    b.axhline(float(y.mean()), color="#999999", ls=":", label=f"chance ({y.mean():.3f})")
    for i, t in enumerate(result.metadata.thresholds):
        m = metrics["thresholds"][t.name]
        color = _THRESHOLD_COLORS[i % len(_THRESHOLD_COLORS)]
        a.plot(m["false_positive_rate"], m["recall"], "o", color=color, ms=8, label=t.name)
        b.plot(m["recall"], m["precision"], "o", color=color, ms=8, label=t.name)
    a.set(xlabel="false-positive rate", ylabel="true-positive rate (recall)", title="ROC curve")
    b.set(xlabel="recall", ylabel="precision", title="Precision-recall curve", ylim=(0, 1.02))
    a.legend(loc="lower right", fontsize=9)
    b.legend(loc="lower left", fontsize=9)
    return _save(fig, path)


def plot_feature_errors(result: TrainResult, path: Path) -> str:
    """Mean per-feature squared error of normal vs anomalous held-out rows: what breaks, where."""
    import torch

    plt = _pyplot()
    ev = result.splits.evaluation
    with torch.no_grad():
        fe = result.graph(torch.from_numpy(result.x[ev]))[1].numpy()
    names = result.feature_names
    d = len(names)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * d + 2), 4.5))
    pos = np.arange(d)
    width = 0.4
    if result.labels is None:
        ax.bar(pos, fe.mean(axis=0), color=_NORMAL_COLOR, label="held-out rows")
    else:
        y = result.labels[ev]
        ax.bar(pos - width / 2, fe[y == 0].mean(axis=0), width, color=_NORMAL_COLOR, label="normal")
        if (y == 1).any():
            ax.bar(pos + width / 2, fe[y == 1].mean(axis=0), width, color=_ANOMALY_COLOR, label="anomalous")
    ax.set_yscale("log")
    ax.set_xticks(pos, names if d <= 60 else [""] * d, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("mean squared error (scaled)")
    ax.set_title("Per-feature reconstruction error on held-out rows")
    ax.legend()
    return _save(fig, path)


def _grid(n: int) -> tuple[int, int]:
    cols = int(np.ceil(np.sqrt(n * 1.5)))
    return int(np.ceil(n / cols)), cols


def plot_first_layer(result: TrainResult, path: Path) -> str:
    """One panel per first-layer neuron: its weight on each input feature (red = +, blue = -)."""
    plt = _pyplot()
    w = result.fit.model.encoder_weight(0).detach().numpy()  # [units, d]
    order = np.argsort(-np.linalg.norm(w, axis=1), kind="stable")[:MAX_NEURON_PANELS]
    rows, cols = _grid(len(order))
    d = w.shape[1]
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 1.9 * rows + 0.6), squeeze=False, sharey=True)
    limit = float(np.abs(w[order]).max()) or 1.0
    show_names = d <= 16
    for ax, unit in zip(axes.flat, order, strict=False):
        colors = np.where(w[unit] >= 0, "#C44E52", "#4C72B0")
        ax.bar(np.arange(d), w[unit], color=colors)
        ax.set_ylim(-limit, limit)
        ax.set_title(f"neuron {unit}", fontsize=8)
        ax.set_xticks(np.arange(d) if show_names else [])
        if show_names:
            ax.set_xticklabels(result.feature_names, rotation=90, fontsize=6)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(order) :]:
        ax.axis("off")
    shown = f"{len(order)} of {w.shape[0]} neurons, largest weights first" if w.shape[0] > len(order) else ""
    fig.suptitle(f"First layer: each neuron's weight per input feature {shown}".strip(), fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def coding_unit_rows(result: TrainResult, top: int = TOP_ROWS) -> tuple[np.ndarray, list[np.ndarray]]:
    """Codings of the training rows, and per coding unit the indices of the rows activating it most."""
    import torch

    train = result.splits.train
    with torch.no_grad():
        codes = result.graph(torch.from_numpy(result.x[train]))[2].numpy()
    tops = [train[np.argsort(-codes[:, k], kind="stable")[:top]] for k in range(codes.shape[1])]
    return codes, tops


def plot_coding_units(result: TrainResult, path: Path, tops: list[np.ndarray]) -> str:
    """Per coding unit: z-scored feature profile of its most activating training rows."""
    plt = _pyplot()
    k = len(tops)
    z = (result.x - result.fit.mean) / result.fit.scale
    d = len(result.feature_names)
    rows, cols = _grid(min(k, 16))
    fig, axes = plt.subplots(
        rows, cols, figsize=(max(3.2, 0.3 * d + 1.5) * cols, 2.8 * rows + 0.6), squeeze=False
    )
    for unit, ax in enumerate(axes.flat):
        if unit >= min(k, 16):
            ax.axis("off")
            continue
        profile = z[tops[unit]]
        for r in profile:
            ax.plot(np.arange(d), r, color="#999999", lw=0.8, alpha=0.7)
        ax.plot(np.arange(d), profile.mean(axis=0), color=_NORMAL_COLOR, lw=2, marker="o", ms=3)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(f"coding unit {unit + 1}: top {len(tops[unit])} training rows", fontsize=9)
        ax.set_xticks(np.arange(d), result.feature_names if d <= 30 else [""] * d, rotation=90, fontsize=7)
        ax.set_ylabel("standard units", fontsize=8)
    fig.suptitle("What each coding unit responds to (grey: rows, blue: their mean, 0 = feature average)")
    fig.tight_layout()
    return _save(fig, path)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _threshold_table(result: TrainResult) -> str:
    per = result.metadata.evaluation.get("thresholds", {})
    rows = []
    for t in result.metadata.thresholds:
        m = per.get(t.name, {})
        cells = [
            html.escape(t.name),
            f"{t.value:.5g}",
            html.escape(describe_threshold(t, result.metadata.training["split_rows"]["calibration"])),
        ]
        cells.append(f"{100 * m.get('flagged_rate', 0):.2f} %")
        cells += [f"{m[k]:.3f}" if k in m else "-" for k in ("precision", "recall", "f1")]
        rows.append(cells)
    return _table(
        ["level", "value", "chosen as", "flagged (of evaluation rows)", "precision", "recall", "F1"],
        rows,
    )


def _coding_table(result: TrainResult, codes_tops: list[np.ndarray], codes: np.ndarray) -> str:
    names = result.feature_names
    shown = names[:12]
    parts = []
    position = {int(r): i for i, r in enumerate(result.splits.train)}
    for unit, rows in enumerate(codes_tops[:16]):
        body = []
        for r in rows:
            act = codes[position[int(r)], unit]
            # Rows counted from 1 in the data, as `aeguard score` counts them.
            body.append([str(int(r) + 1), f"{act:.3f}", *(f"{v:.4g}" for v in result.x[r, : len(shown)])])
        more = " (first 12 features)" if len(names) > 12 else ""
        parts.append(
            f"<h4>coding unit {unit + 1}{more}</h4>"
            + _table(["row (from 1)", "activation", *(html.escape(n) for n in shown)], body)
        )
    return "\n".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;color:#222;
padding:0 1em} h1{margin-bottom:0} .sub{color:#666;margin-top:.2em} img{max-width:100%;border:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:90%} td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right} th{background:#f3f3f3} pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:85%}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:.6em 1em} figcaption{color:#555;margin:.3em 0 2em}
"""


def write_report(result: TrainResult, out_dir: str | Path) -> Path:
    """Write the figures, ``metadata.json`` and ``index.html`` into ``out_dir``.

    Parameters
    ----------
    result : TrainResult
        A finished training run.
    out_dir : str or Path
        Created if missing; existing report files are overwritten.

    Returns
    -------
    Path
        The ``index.html`` file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = result.metadata
    figures, codes, tops = _common_figures(result, out)
    for panel in architecture(result.architecture).report_panels:
        figures += panel(result, out, _pyplot())
    (out / "metadata.json").write_text(json.dumps(json.loads(meta.to_json()), indent=2, sort_keys=True))
    ident = meta.evaluation.get("identity_check", {})
    warning = ""
    if ident.get("copying"):
        warning = (
            "<p class='warn'><b>Identity check failed:</b> shuffled or random rows reconstruct about as well "
            "as real ones, so the model may be copying its input. Try a smaller coding size.</p>"
        )
    sections = "\n".join(
        f"<h2>{html.escape(title)}</h2><figure>"
        + (f"<img src='{file}' alt='{html.escape(title)}'>" if file else "")  # "": a figure in words
        + f"<figcaption>{html.escape(text)}</figcaption></figure>"
        for file, title, text in figures
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>aeguard report: {html.escape(meta.name)}</title>
<style>{_CSS}</style></head><body>
<h1>aeguard model <code>{html.escape(meta.name)}</code> {html.escape(meta.version)}</h1>
<p class="sub">{html.escape(meta.training.get("source", ""))} &middot; created {html.escape(meta.created_at)}
&middot; <a href="metadata.json">metadata.json</a></p>
{warning}
<h2>Summary</h2><pre>{html.escape(format_summary(result))}</pre>
<h2>Thresholds on the evaluation split</h2>{_threshold_table(result)}
{sections}
<h2>Training rows that most activate each coding unit</h2>
{_coding_table(result, tops, codes)}
</body></html>
"""
    index = out / "index.html"
    index.write_text(page)
    log.info("report written to %s", index)
    return index


def _common_figures(
    result: TrainResult, out: Path
) -> tuple[list[tuple[str, str, str]], np.ndarray, list[np.ndarray]]:
    """Every kind's figures as ``(file, title, how to read it)``, and the coding units' top rows."""
    figures: list[tuple[str, str, str]] = []  # (file, title, how to read it)
    figures.append(
        (
            plot_learning_curves(result, out / "learning_curves.png"),
            "Learning curves",
            "Loss per epoch. The model is restored to the best validation epoch (dashed line); a validation "
            "curve that rises while training falls means over-fitting.",
        )
    )
    figures.append(
        (
            plot_score_histogram(result, out / "scores.png"),
            "Score distributions",
            "Held-out rows the model never saw. Good separation: normal rows left of the thresholds, "
            "anomalies right of them.",
        )
    )
    roc = plot_roc_pr(result, out / "roc_pr.png")
    if roc:
        figures.append(
            (
                roc,
                "ROC and precision-recall",
                "Dots: the operating points of the thresholds on the evaluation split.",
            )
        )
    figures.append(
        (
            plot_feature_errors(result, out / "feature_errors.png"),
            "Per-feature errors",
            "Which features the model fails to reconstruct; for anomalies, the features that explain them.",
        )
    )
    # The weights and codings shown are the first network's: its codings are the model's `codes`.
    ensemble = len(result.member_fits) > 1
    of_first = " of the first network" if ensemble else ""
    codes_note = " of the first network (the model's codes)" if ensemble else ""
    figures.append(
        (
            plot_first_layer(result, out / "first_layer_weights.png"),
            "First-layer weights",
            f"Each panel is one neuron{of_first}; bars are its weights on the (standardised) input "
            "features. Neurons mixing several features are what capture correlations.",
        )
    )
    codes, tops = coding_unit_rows(result)
    figures.append(
        (
            plot_coding_units(result, out / "coding_units.png", tops),
            "Coding units",
            f"For each unit of the coding layer{codes_note}, the training rows that drive it highest, in "
            "standard units per feature: the pattern that unit encodes. The rows are listed below, "
            "numbered from 1 in the data as `aeguard score` numbers them.",
        )
    )
    return figures, codes, tops
