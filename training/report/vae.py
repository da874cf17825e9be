"""The training report's real-versus-generated panel for a variational autoencoder.

Generated rows come from the model's generator with the draws of `aeguard sample` (same seed,
same rows); the real rows are held-out normal rows the network never trained on (calibration and
normal evaluation rows). Three views: per-feature histograms, the two correlation matrices side
by side, and a fidelity figure, the ROC-AUC of a classifier two-sample test: a gradient-boosted
classifier tries to tell real from generated rows under 5-fold cross-validation; 0.5 means it
cannot, 1.0 means it always can.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from service.sample import draw_inputs
from training.export.generator import generator_graph

if TYPE_CHECKING:
    from training.result import TrainResult

#: Held-out real rows compared (a seeded subsample above this); as many rows are generated.
MAX_ROWS = 5000
#: Features shown in the histogram grid (the first ones, in the model's order).
MAX_HISTOGRAMS = 24
#: Folds of the classifier two-sample test.
C2ST_FOLDS = 5
_REAL_COLOR = "#4C72B0"
_GENERATED_COLOR = "#DD8452"


def held_out_normal_rows(result: TrainResult, seed: int) -> np.ndarray:
    """Normal rows the network did not train on: the calibration split and the evaluation split's
    normal rows (at most :data:`MAX_ROWS`, a seeded subsample)."""
    ev = result.splits.evaluation
    if result.labels is not None:
        ev = ev[result.labels[ev] == 0]
    rows = np.concatenate([result.splits.calibration, ev])
    if len(rows) > MAX_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_ROWS, replace=False))
    return result.x[rows]


def generated_rows(result: TrainResult, n_rows: int, seed: int) -> np.ndarray:
    """``n_rows`` rows from the fitted generator in torch, drawn as `aeguard sample --seed` draws them."""
    gen = generator_graph(result.graph)
    z, noise, member = draw_inputs(
        np.random.default_rng(seed), n_rows, gen.latent_size, result.x.shape[1], len(gen.coding_sizes)
    )
    with torch.no_grad():
        samples = gen(torch.from_numpy(z), torch.from_numpy(noise)).numpy()
    return samples[member, np.arange(n_rows)]


def two_sample_auc(real: np.ndarray, generated: np.ndarray, seed: int) -> float:
    """Cross-validated ROC-AUC of a classifier telling ``generated`` (1) from ``real`` (0) rows.

    Parameters
    ----------
    real, generated : numpy.ndarray
        Rows ``[n, d]`` in raw units (trees need no scaling).
    seed : int
        Seeds the folds and the classifier.

    Returns
    -------
    float
        0.5 = indistinguishable; 1.0 = always told apart.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = np.vstack([real, generated]).astype(np.float64)
    y = np.concatenate([np.zeros(len(real)), np.ones(len(generated))])
    folds = StratifiedKFold(C2ST_FOLDS, shuffle=True, random_state=seed)
    clf = HistGradientBoostingClassifier(random_state=seed)
    proba = cross_val_predict(clf, x, y, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, proba))


def _correlation(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(x, rowvar=False)
    return np.nan_to_num(np.atleast_2d(corr), nan=0.0)  # a constant column correlates with nothing


def plot_histograms(real: np.ndarray, generated: np.ndarray, names: list[str], path: Path, plt: Any) -> str:
    """One panel per feature: real vs generated rows on shared bins."""
    shown = min(len(names), MAX_HISTOGRAMS)
    cols = min(4, shown)
    rows = int(np.ceil(shown / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows + 0.6), squeeze=False)
    for j, ax in enumerate(axes.flat):
        if j >= shown:
            ax.axis("off")
            continue
        lo, hi = np.percentile(np.concatenate([real[:, j], generated[:, j]]), [0.5, 99.5])
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 40)
        ax.hist(real[:, j], bins=bins, density=True, alpha=0.55, color=_REAL_COLOR, label="real")
        ax.hist(
            generated[:, j], bins=bins, density=True, alpha=0.55, color=_GENERATED_COLOR, label="generated"
        )
        ax.set_title(names[j], fontsize=9)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=8, loc="upper right")
    more = f" (first {shown} of {len(names)} features)" if len(names) > shown else ""
    fig.suptitle(f"Per-feature distributions, real vs generated{more}")
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path.name


def plot_correlations(real: np.ndarray, generated: np.ndarray, names: list[str], path: Path, plt: Any) -> str:
    """The real and the generated rows' correlation matrices side by side, on one colour scale."""
    d = len(names)
    fig, axes = plt.subplots(1, 2, figsize=(2 * max(4.0, 0.3 * d + 2), max(3.6, 0.3 * d + 1.4)))
    image = None
    for ax, x, title in ((axes[0], real, "real (held-out normal rows)"), (axes[1], generated, "generated")):
        image = ax.imshow(_correlation(x), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(title)
        ticks: list[int] = list(range(d)) if d <= 30 else []
        ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize=7)
        ax.set_yticks(ticks, [names[i] for i in ticks] if ax is axes[0] else [""] * len(ticks), fontsize=7)
        ax.grid(False)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="Pearson correlation")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path.name


def generation_panel(result: TrainResult, out: Path, plt: Any) -> list[tuple[str, str, str]]:
    """Write the panel's figures and ``generation.json`` into ``out``; return ``(file, title, caption)``."""
    seed = result.fit_seed
    real = held_out_normal_rows(result, seed)
    generated = generated_rows(result, len(real), seed)
    auc = two_sample_auc(real, generated, seed)
    figures = {
        "rows": len(real),
        "seed": seed,
        "two_sample_auc": auc,
        "classifier": f"HistGradientBoostingClassifier, {C2ST_FOLDS}-fold cross-validated ROC-AUC",
        "max_abs_correlation_difference": float(np.abs(_correlation(real) - _correlation(generated)).max()),
    }
    (out / "generation.json").write_text(json.dumps(figures, indent=2, sort_keys=True))
    names = result.feature_names
    same = f"`aeguard sample MODEL -n {len(real)} --seed {seed}` writes these rows"
    return [
        (
            plot_histograms(real, generated, names, out / "generated_histograms.png", plt),
            "Real vs generated: per-feature distributions",
            f"{len(real)} held-out normal rows vs as many rows generated from the prior ({same}).",
        ),
        (
            plot_correlations(real, generated, names, out / "generated_correlations.png", plt),
            "Real vs generated: correlations",
            "Correlation matrices of the same rows; largest absolute difference "
            f"{figures['max_abs_correlation_difference']:.2f}.",
        ),
        (
            "",
            f"Fidelity: classifier two-sample test ROC-AUC {auc:.3f}",
            "A gradient-boosted classifier tries to tell the real rows from the generated ones under "
            f"{C2ST_FOLDS}-fold cross-validation: 0.5 = indistinguishable, 1.0 = always told apart "
            "(figures in generation.json).",
        ),
    ]
