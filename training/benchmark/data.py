"""Benchmark data: NPZ datasets (``X``, ``y``), stratified subsampling and the novelty split.

The novelty protocol is the one a service trained on normal traffic lives in: every detector is
fitted on a seeded 60 % of the normal rows and tested on the other 40 % plus every anomaly.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from service.errors import DataError

log = logging.getLogger(__name__)

#: Datasets with more rows than this are subsampled (stratified, fixed seed) before any split.
MAX_ROWS = 20_000
#: Seed of the subsample: fixed, so every seed and detector sees the same rows.
SUBSAMPLE_SEED = 0
#: Share of the normal rows a detector is fitted on; the rest is held out for the test set.
TRAIN_FRACTION = 0.6


@dataclass(frozen=True)
class Dataset:
    """One labelled dataset: rows ``x`` [n, d] float64 and labels ``y`` [n] (1 = anomaly)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    n_original: int  # rows in the file, before any subsampling

    @property
    def subsampled(self) -> bool:
        return len(self.y) < self.n_original


@dataclass(frozen=True)
class Split:
    """Row indices of one novelty split: ``train`` holds normal rows only."""

    train: np.ndarray
    test: np.ndarray


def dataset_name(path: Path) -> str:
    """``4_breastw.npz`` -> ``breastw``: the ADBench number prefix is dropped."""
    return re.sub(r"^\d+_", "", path.stem)


def list_npz(directory: Path, names: list[str] | None = None) -> list[Path]:
    """NPZ files in ``directory`` ordered by name; ``names`` keeps those matching (stem or name)."""
    if not directory.is_dir():
        raise DataError(f"benchmark directory {directory} does not exist or is not a directory")
    paths = sorted(directory.glob("*.npz"), key=lambda p: dataset_name(p).lower())
    if names:
        wanted = {n.lower() for n in names}
        paths = [p for p in paths if p.stem.lower() in wanted or dataset_name(p).lower() in wanted]
        found = {p.stem.lower() for p in paths} | {dataset_name(p).lower() for p in paths}
        missing = sorted(wanted - found)
        if missing:
            raise DataError(f"no NPZ file in {directory} for dataset(s): {', '.join(missing)}")
    if not paths:
        raise DataError(f"no *.npz files in {directory}: each needs arrays 'X' (rows) and 'y' (0/1 labels)")
    return paths


def load_dataset(path: Path, max_rows: int = MAX_ROWS) -> Dataset:
    """Read ``X`` and ``y`` from an NPZ file, check them, and subsample above ``max_rows`` rows."""
    try:
        with np.load(path, allow_pickle=False) as data:
            x = np.asarray(data["X"], dtype=np.float64)
            y = np.asarray(data["y"]).astype(np.int64).ravel()
    except KeyError as exc:
        raise DataError(f"{path}: missing array {exc}; a benchmark NPZ needs 'X' and 'y'") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read as NPZ ({exc})") from exc
    if x.ndim != 2 or len(x) != len(y):
        raise DataError(
            f"{path}: X must be [rows, features] with one label per row, got {x.shape}, {y.shape}"
        )
    if not set(np.unique(y)) <= {0, 1} or y.sum() == 0 or y.sum() == len(y):
        raise DataError(f"{path}: y must hold 0 (normal) and 1 (anomaly), both present")
    if not np.isfinite(x).all():
        raise DataError(f"{path}: X holds NaN or Inf values")
    n_original = len(y)
    if n_original > max_rows:
        keep, _ = train_test_split(
            np.arange(n_original), train_size=max_rows, stratify=y, random_state=SUBSAMPLE_SEED
        )
        keep = np.sort(keep)
        x, y = x[keep], y[keep]
        log.info("%s: subsampled %d -> %d rows (stratified)", path.name, n_original, max_rows)
    return Dataset(name=dataset_name(path), x=x, y=y, n_original=n_original)


def novelty_split(y: np.ndarray, seed: int, train_fraction: float = TRAIN_FRACTION) -> Split:
    """Fit on a seeded ``train_fraction`` of the normal rows; test on the rest plus all anomalies."""
    normal = np.flatnonzero(y == 0)
    train, held_out = train_test_split(normal, train_size=train_fraction, random_state=seed)
    test = np.sort(np.concatenate([held_out, np.flatnonzero(y == 1)]))
    return Split(train=np.sort(train), test=test)
