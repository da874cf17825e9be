"""Which score should a VAE artifact carry? Compares candidate scores on the benchmark's novelty splits.

``python -m training.benchmark.vae_study ../shared/datasets/adbench --datasets annthyroid,letter --seeds 0``
trains one default VAE per dataset and seed (the same :func:`training.api.train_model` as
`aeguard train --architecture vae`) and prints the test ROC-AUC of each candidate:

- ``whitened``: the mean of the squared ZCA-whitened residuals of the posterior-mean decoding
  (the plain autoencoder's score, what the exported graph computes);
- ``neg_elbo``: the negative ELBO under the model's own Gaussian decoder (learned per-feature
  variance), as a single-point estimate at the posterior means: ``mean_j r_j^2 / s_j + 2 KL / d``
  (a positive affine map of ``-ELBO``, so the same ranking);
- ``neg_elbo_mc``: the same with the reconstruction term averaged over 16 posterior draws;
- ``whitened_kl``: ``whitened + 2 KL / d``, the negative ELBO under a full-covariance Gaussian
  decoder fitted to the residuals after training.

Ensembles average each candidate over their members. With ``--fidelity`` it instead trains one
default VAE per dataset on all its rows with labels (as `aeguard train DATA.npz --architecture
vae` does) and prints the report's classifier two-sample ROC-AUC for the VAE's generated rows and,
as a reference, for rows drawn from a multivariate normal fitted to the training rows. Results
feed docs/vae.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from training import defaults
from training.api import TrainOptions, train_model
from training.benchmark.data import list_npz, load_dataset, novelty_split
from training.fitting.fit import FitConfig
from training.models.ae import ScoringGraph
from training.models.vae import VariationalAutoencoder, kl_divergence

CANDIDATES = ("whitened", "neg_elbo", "neg_elbo_mc", "whitened_kl")
MC_DRAWS = 16


def candidate_scores(graph: ScoringGraph, x: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Every candidate score of raw rows ``x`` under a fitted VAE scoring graph."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, list[np.ndarray]] = {c: [] for c in CANDIDATES}
    with torch.no_grad():
        z = (torch.from_numpy(x) - graph.mean) / graph.scale
        d = z.shape[1]
        for i, member in enumerate(graph.members):
            assert isinstance(member, VariationalAutoencoder)
            mean, logvar = member.encode_stats(z)
            kl = 2 * kl_divergence(mean, logvar) / d
            residual = member.decode(mean) - z
            precision = torch.exp(-member.output_logvar())
            whitened = residual @ graph.error_whitening[i] if graph.error_whitening is not None else residual
            std = torch.exp(0.5 * logvar)
            draws = torch.stack(
                [
                    (
                        (member.decode(mean + std * torch.randn(mean.shape, generator=gen)) - z) ** 2
                        * precision
                    ).mean(dim=1)
                    for _ in range(MC_DRAWS)
                ]
            )
            out["whitened"].append((whitened**2).mean(dim=1).numpy())
            out["neg_elbo"].append(((residual**2) * precision).mean(dim=1).add(kl).numpy())
            out["neg_elbo_mc"].append(draws.mean(dim=0).add(kl).numpy())
            out["whitened_kl"].append((whitened**2).mean(dim=1).add(kl).numpy())
    return {c: np.mean(v, axis=0) for c, v in out.items()}


def fidelity(path: Path, seed: int) -> tuple[str, int, float, float]:
    """Dataset name, rows compared, two-sample AUC of the VAE's rows and of a fitted Gaussian's."""
    from training.report.vae import generated_rows, held_out_normal_rows, two_sample_auc

    ds = load_dataset(path)
    names = [f"f{i}" for i in range(ds.x.shape[1])]
    options = TrainOptions(fit=FitConfig(architecture="vae", seed=seed), name="fidelity")
    result = train_model(ds.x.astype(np.float32), names, None, labels=ds.y, options=options)
    real = held_out_normal_rows(result, seed)
    vae_auc = two_sample_auc(real, generated_rows(result, len(real), seed), seed)
    train = result.x[result.splits.train].astype(np.float64)
    rng = np.random.default_rng(seed)
    gaussian = rng.multivariate_normal(train.mean(axis=0), np.cov(train, rowvar=False), size=len(real))
    return ds.name, len(real), vae_auc, two_sample_auc(real, gaussian, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--datasets", help="comma-separated names (default: all)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--kl-weight", type=float, default=defaults.KL_WEIGHT)
    parser.add_argument("--fidelity", action="store_true", help="generation fidelity instead of scores")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = [n for n in (args.datasets or "").split(",") if n] or None
    if args.fidelity:
        print("| dataset | rows compared | two-sample AUC, VAE | two-sample AUC, fitted Gaussian |")
        print("| --- | ---: | ---: | ---: |")
        for path in list_npz(args.directory, names):
            name, n, vae_auc, gauss_auc = fidelity(path, int(args.seeds.split(",")[0]))
            print(f"| {name} | {n} | {vae_auc:.3f} | {gauss_auc:.3f} |", flush=True)
        return 0
    rows = []
    print("| dataset | seed | " + " | ".join(CANDIDATES) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in CANDIDATES) + " |")
    for path in list_npz(args.directory, names):
        ds = load_dataset(path)
        for seed in (int(s) for s in args.seeds.split(",")):
            split = novelty_split(ds.y, seed)
            x_train = ds.x[split.train].astype(np.float32)
            x_test, y_test = ds.x[split.test].astype(np.float32), ds.y[split.test]
            names_ = [f"f{i}" for i in range(ds.x.shape[1])]
            fit = FitConfig(architecture="vae", seed=seed, kl_weight=args.kl_weight)
            options = TrainOptions(fit=fit, name="study")
            result = train_model(x_train, names_, None, options=options)
            scores = candidate_scores(result.graph, x_test, seed)
            aucs = [roc_auc_score(y_test, scores[c]) for c in CANDIDATES]
            rows.append(aucs)
            print(f"| {ds.name} | {seed} | " + " | ".join(f"{a:.3f}" for a in aucs) + " |", flush=True)
    means = np.mean(rows, axis=0)
    print("| **mean** | | " + " | ".join(f"**{m:.3f}**" for m in means) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
