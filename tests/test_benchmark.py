"""The detection-quality benchmark: split protocol, subsampling, and `aeguard benchmark` end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from service.cli import main
from training.benchmark.data import list_npz, load_dataset, novelty_split


def _write_npz(path: Path, n_normal: int, n_anomaly: int, d: int, seed: int) -> None:
    """Normals around the origin, anomalies shifted far away: any sane detector separates them."""
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.normal(size=(n_normal, d)), rng.normal(loc=4.0, size=(n_anomaly, d))])
    y = np.r_[np.zeros(n_normal, dtype=np.int64), np.ones(n_anomaly, dtype=np.int64)]
    order = rng.permutation(len(y))
    np.savez(path, X=x[order], y=y[order])


@pytest.fixture(scope="module")
def npz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("npz")
    _write_npz(directory / "1_small.npz", n_normal=150, n_anomaly=20, d=5, seed=1)
    _write_npz(directory / "7_wide.npz", n_normal=400, n_anomaly=30, d=12, seed=2)
    return directory


def test_novelty_split_trains_on_normals_only_and_tests_on_the_rest(npz_dir: Path) -> None:
    ds = load_dataset(npz_dir / "7_wide.npz")
    split = novelty_split(ds.y, seed=3)
    assert (ds.y[split.train] == 0).all()
    assert len(split.train) == 240  # 60 % of 400 normal rows
    assert not set(split.train) & set(split.test)
    assert (ds.y[split.test] == 1).sum() == 30  # every anomaly is tested
    assert (ds.y[split.test] == 0).sum() == 160
    again = novelty_split(ds.y, seed=3)
    other = novelty_split(ds.y, seed=4)
    assert np.array_equal(split.train, again.train)
    assert not np.array_equal(split.train, other.train)


def test_large_dataset_is_subsampled_stratified_and_deterministic(npz_dir: Path) -> None:
    full = load_dataset(npz_dir / "7_wide.npz")
    small = load_dataset(npz_dir / "7_wide.npz", max_rows=215)
    assert not full.subsampled
    assert small.subsampled and small.n_original == 430 and len(small.y) == 215
    assert small.y.sum() == 15  # the anomaly share (30 of 430) is kept
    assert np.array_equal(small.x, load_dataset(npz_dir / "7_wide.npz", max_rows=215).x)


def test_dataset_filter_accepts_name_or_stem(npz_dir: Path) -> None:
    assert [p.name for p in list_npz(npz_dir, ["wide"])] == ["7_wide.npz"]
    assert [p.name for p in list_npz(npz_dir, ["1_small"])] == ["1_small.npz"]


def test_benchmark_command_writes_report_and_raw_results(npz_dir: Path, tmp_path: Path) -> None:
    out, raw = tmp_path / "quality.md", tmp_path / "raw.csv"
    rc = main(
        ["benchmark", str(npz_dir), "--out", str(out), "--raw", str(raw), "--detectors", "iforest,ecod",
         "--seeds", "0,1", "--jobs", "1", "--max-rows", "300"]
    )  # fmt: skip
    assert rc == 0
    text = out.read_text()
    assert "## ROC-AUC" in text and "## PR-AUC" in text and "average rank" in text
    assert "subsampled from 430 rows" in text  # the table says which datasets were subsampled
    assert "--seeds 0,1 --detectors iforest,ecod" in text
    rows = list(csv.DictReader(raw.open()))
    assert len(rows) == 2 * 2 * 2  # datasets x seeds x detectors
    assert {r["detector"] for r in rows} == {"iforest", "ecod"}
    # Shifted anomalies are easy: both detectors must find them, on every split.
    assert all(float(r["roc_auc"]) > 0.95 for r in rows), rows
    assert all(r["error"] == "" for r in rows)


def test_benchmark_runs_in_worker_processes(npz_dir: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw.csv"
    rc = main(
        [
            "benchmark",
            str(npz_dir),
            "--raw",
            str(raw),
            "--detectors",
            "iforest",
            "--seeds",
            "0",
            "--jobs",
            "2",
        ]
    )
    assert rc == 0
    rows = list(csv.DictReader(raw.open()))
    assert sorted(r["dataset"] for r in rows) == ["small", "wide"]
    assert all(float(r["roc_auc"]) > 0.95 for r in rows)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--detectors", "nope"], "unknown detector"),
        (["--seeds", "a,b"], "--seeds must be"),
        (["--datasets", "missing"], "no NPZ file"),
    ],
)
def test_bad_arguments_are_user_errors(
    npz_dir: Path, argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["benchmark", str(npz_dir), *argv]) == 2
    assert needle in capsys.readouterr().err


def test_missing_directory_says_where_adbench_comes_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AEGUARD_ADBENCH_DIR", raising=False)
    assert main(["benchmark", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "adbench/datasets/Classical/" in err and err.count("\n") == 1
    assert main(["benchmark"]) == 2
    err = capsys.readouterr().err
    assert "AEGUARD_ADBENCH_DIR" in err and "adbench/datasets/Classical/" in err


def test_directory_from_the_environment(
    npz_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AEGUARD_ADBENCH_DIR", str(npz_dir))
    out = tmp_path / "q.md"
    argv = ["benchmark", "--detectors", "ecod", "--seeds", "0", "--jobs", "1", "--out", str(out)]
    assert main(argv) == 0
    assert f"aeguard benchmark {npz_dir}" in out.read_text()


def test_aeguard_detector_is_scored_through_its_onnx_file(
    npz_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = tmp_path / "raw.csv"
    rc = main(
        ["benchmark", str(npz_dir), "--raw", str(raw), "--detectors", "aeguard", "--datasets", "small",
         "--seeds", "0", "--jobs", "1"]
    )  # fmt: skip
    assert rc == 0
    (row,) = list(csv.DictReader(raw.open()))
    assert row["error"] == ""
    assert float(row["roc_auc"]) > 0.95
    assert float(row["fit_cpu_s"]) > 0
    # The warm-up fit on random rows gives no advice, least of all about a --coding-size benchmark lacks.
    assert "--coding-size" not in caplog.text


def test_summary_rows_have_one_cell_per_column(npz_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.md"
    assert (
        main(
            [
                "benchmark",
                str(npz_dir),
                "--out",
                str(out),
                "--detectors",
                "ecod",
                "--seeds",
                "0",
                "--jobs",
                "1",
            ]
        )
        == 0
    )
    table = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    header, row = table[0], next(line for line in table if line.startswith("| ecod |"))
    assert header.count("|") == row.count("|")
