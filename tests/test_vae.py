"""The variational autoencoder end to end: train, export with parity, serve unchanged, sample, report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from service.cli import main
from service.client import Client
from service.config import ServerConfig
from service.model_store import ModelStore
from service.rpc.server import ServerHandle, build_server
from service.sample import generate, load_generator
from service.scorer import Scorer
from training.api import TrainOptions, TrainResult, train_model
from training.fitting.fit import FitConfig, fit_autoencoder
from training.models.vae import VariationalAutoencoder, kl_weight_at
from training.registry import ARCHITECTURES
from training.report.html import write_report
from training.report.vae import generated_rows


@pytest.fixture(scope="module")
def vae(tiny_dataset, tmp_path_factory) -> tuple[TrainResult, Path]:
    """A two-network VAE (tanh + gelu, coding size 2) on the tiny data set, trained in seconds."""
    out = tmp_path_factory.mktemp("vae") / "vae.onnx"
    options = TrainOptions(
        name="tiny-vae",
        version="1",
        thresholds=("warning=q0.95", "critical=q0.999"),
        fit=FitConfig(
            architecture="vae", hidden=[16], coding_size=2, activation="tanh,gelu", max_epochs=40, seed=0
        ),
    )
    result = train_model(
        tiny_dataset.X, tiny_dataset.feature_names, out, labels=tiny_dataset.y, options=options
    )
    return result, out


def test_vae_exports_with_parity_and_posterior_mean_codes(vae, tiny_dataset, capsys):
    result, path = vae
    meta = result.metadata
    assert meta.architecture["kind"] == "variational_autoencoder"
    assert meta.architecture["undercomplete"] and meta.architecture["members"] == 2
    assert all(isinstance(m, VariationalAutoencoder) for m in result.graph.members)
    # Both graphs proven equal to torch within the tolerance; the generator's figures are recorded.
    assert meta.export["parity_worst_fraction_of_tolerance"] <= 1.0
    generator = meta.export["generator"]
    assert generator["parity_worst_fraction_of_tolerance"] <= 1.0 and generator["latent_size"] == 2
    assert main(["inspect", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "variational, 2 networks averaged" in shown and "`aeguard sample`: 2 prior draws" in shown
    # `codes` are the first network's posterior means; the anomalies still stand out.
    scorer = Scorer.load(path)
    x = tiny_dataset.X[:50]
    with torch.no_grad():
        z = (torch.from_numpy(x) - result.graph.mean) / result.graph.scale
        means, _ = result.graph.members[0].encode_stats(z)
    np.testing.assert_allclose(scorer.encode(x), means.numpy(), atol=1e-4)
    assert meta.evaluation["roc_auc"] > 0.9


def test_scorer_server_and_batch_job_load_a_vae_unchanged(vae, tiny_dataset, tmp_path, capsys):
    _, path = vae
    scorer = Scorer.load(path)
    expected = scorer.score(tiny_dataset.X[:20]).score
    store = ModelStore()
    store.load_path(path)
    handle: ServerHandle = build_server(ServerConfig(port=0, metrics_port=0, default_model="tiny-vae"), store)
    try:
        with Client(f"127.0.0.1:{handle.port}") as client:
            client.wait_ready(timeout_s=30)
            got = client.score(tiny_dataset.X[:20])
            codes = client.encode(tiny_dataset.X[:20])
    finally:
        handle.stop(0)
    np.testing.assert_allclose(got.score, expected, rtol=1e-6)
    assert codes.shape == (20, 2)
    out = tmp_path / "scores.csv"
    argv = ["score", "--model", str(path), "--input", str(tiny_dataset.csv_path), "--output", str(out)]
    assert main([*argv, "--no-progress", "--keep-columns", "label"]) == 0
    scored = np.genfromtxt(out, delimiter=",", names=True)
    assert len(scored) == len(tiny_dataset.X)
    capsys.readouterr()


def test_sample_writes_rows_under_feature_names_deterministically(vae, tmp_path, capsys):
    result, path = vae
    csv_out, parquet_out = tmp_path / "a.csv", tmp_path / "b.parquet"
    assert main(["sample", str(path), "-n", "300", "--out", str(csv_out), "--seed", "5"]) == 0
    assert main(["sample", str(path), "-n", "300", "--out", str(parquet_out), "--seed", "5"]) == 0
    assert "wrote 300 generated rows" in capsys.readouterr().out
    header = csv_out.read_text().splitlines()[0]
    assert header.replace('"', "").split(",") == result.feature_names
    from_csv = np.genfromtxt(csv_out, delimiter=",", skip_header=1)
    table = pq.read_table(parquet_out)
    assert table.column_names == result.feature_names and table.num_rows == 300
    from_parquet = np.column_stack([table.column(n).to_numpy() for n in result.feature_names])
    np.testing.assert_allclose(from_csv, from_parquet, rtol=1e-6)
    # Same seed, same rows; another seed, other rows; raw units around the data's own.
    generator = load_generator(path)
    np.testing.assert_array_equal(generate(generator, 300, 5), from_parquet.astype(np.float32))
    assert not np.allclose(generate(generator, 300, 6), from_parquet)
    real = result.x[result.labels == 0]
    assert np.all(np.abs(from_parquet.mean(axis=0) - real.mean(axis=0)) < real.std(axis=0))
    # The report's rows are `aeguard sample`'s rows (torch vs onnxruntime, within parity).
    np.testing.assert_allclose(generated_rows(result, 300, 5), from_parquet, rtol=1e-3, atol=1e-3)


def test_refusals_are_one_line_with_exit_2(vae, tiny_dataset, tiny_model_path, tmp_path, capsys):
    _, path = vae
    cases = [
        (["train", str(tiny_dataset.csv_path), "--out", str(tmp_path / "m.onnx"), "--architecture", "gan"],
         "unknown 'gan'"),
        (["sample", str(tiny_model_path), "-n", "5", "--out", str(tmp_path / "s.csv")],
         "not a variational autoencoder"),
        (["sample", str(path), "-n", "0", "--out", str(tmp_path / "s.csv")], "-n must be >= 1"),
        (["sample", str(path), "-n", "5", "--out", str(tmp_path / "s.txt")], "unknown extension"),
        (["train", str(tiny_dataset.csv_path), "--out", str(tmp_path / "m.onnx"), "--kl-weight", "-1"],
         "--kl-weight"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("aeguard: error:") and message in err and "\n" not in err, err
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "m.onnx").exists()


def test_report_has_the_real_versus_generated_panel(vae, tmp_path):
    result, _ = vae
    index = write_report(result, tmp_path / "report")
    files = {p.name for p in index.parent.iterdir()}
    assert {"generated_histograms.png", "generated_correlations.png", "generation.json"} <= files
    figures = json.loads((index.parent / "generation.json").read_text())
    assert 0.0 <= figures["two_sample_auc"] <= 1.0 and figures["rows"] > 0
    page = index.read_text()
    assert "generated_correlations.png" in page and "two-sample test ROC-AUC" in page


def test_kl_weight_warms_up_and_early_stopping_waits_for_it(tiny_dataset):
    assert [kl_weight_at(2.0, 4, e) for e in (1, 2, 4, 9)] == [0.5, 1.0, 2.0, 2.0]
    assert kl_weight_at(0.5, 0, 1) == 0.5
    x = tiny_dataset.normal
    config = FitConfig(
        architecture="vae",
        hidden=[8],
        coding_size=2,
        activation="tanh",
        patience=1,
        min_epochs=1,
        kl_warmup_epochs=7,
        seed=0,
    )
    fit = fit_autoencoder(x[:400], x[400:], config, build=ARCHITECTURES[config.architecture].build)
    assert isinstance(fit.model, VariationalAutoencoder)
    assert len(fit.train_loss) >= 7
    assert all(np.isfinite(fit.validation_loss))


def test_sampling_needs_no_torch(vae, tmp_path):
    """`aeguard sample` runs on the serving install: onnxruntime only, no torch or training/."""
    _, path = vae
    out = tmp_path / "s.parquet"
    code = (
        "import sys; from service.cli import main; "
        f"rc = main(['sample', {str(path)!r}, '-n', '10', '--out', {str(out)!r}]); "
        "bad = [m for m in ('torch', 'training', 'sklearn') if m in sys.modules]; "
        "print(bad); sys.exit(rc or (1 if bad else 0))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert pq.read_table(out).num_rows == 10


def test_plain_autoencoder_files_are_unchanged(tiny_model_path):
    """An `ae` model carries no generator entry: its file is what it was before VAEs existed."""
    import onnxruntime as ort

    keys = set(ort.InferenceSession(str(tiny_model_path)).get_modelmeta().custom_metadata_map)
    assert keys == {"aeguard"}


def test_benchmark_row_aeguard_vae_scores_through_its_onnx_file(tiny_dataset):
    """`aeguard benchmark --detectors aeguard-vae` (and `make quality`): default VAE settings, scored by
    the service's scorer from the exported file."""
    from sklearn.metrics import roc_auc_score

    from training.benchmark.detectors import DETECTORS, build_detector

    assert "aeguard-vae" in DETECTORS
    detector = build_detector("aeguard-vae", 0)
    normal = tiny_dataset.normal
    detector.fit(normal[:400])
    assert detector.scorer.metadata.architecture["kind"] == "variational_autoencoder"
    x = np.vstack([normal[400:], tiny_dataset.anomalies])
    y = np.r_[np.zeros(len(normal) - 400), np.ones(len(tiny_dataset.anomalies))]
    assert roc_auc_score(y, detector.anomaly_score(x)) > 0.9
