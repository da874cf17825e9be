"""`make bench-windows`: the evidence of issue 22, row-wise against windowed, on SKAB and the simulator.

``python -m training.window_bench [--skab DIR] [--simulator] [--window auto|W]``

SKAB (Skoltech Anomaly Benchmark), its published outlier-detection protocol: for each of the 34
labelled files, train on the first 400 rows and score the rest; F1, FAR (FP / (FP + TN)) and MAR
(FN / (FN + TP)) over the confusion matrix summed over all files. An alert is aeguard's own
``is_anomaly`` at its own calibrated threshold; nothing is tuned per file. A windowed model scores
the test rows as the batch job would (its first W - 1 rows are warm-up: no alert).

The simulator: the default model's data (``training.simulator``, seed 0) trains, a fresh recording
(``SimulatorConfig(seed=123)``) is scored; recall per anomaly kind at the lowest threshold
(warning or higher) and the false-positive rate on its normal rows.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.scorer import Scorer
from service.windows import WindowBuilder
from training.api import train_model, train_windowed
from training.builtin import DEFAULT_NAME, DEFAULT_SIMULATION
from training.data.samples import RowContext
from training.data.simulator import ANOMALY_KINDS, SimulatorConfig, simulate_telemetry
from training.data.windows import WindowOptions, parse_window
from training.result import TrainOptions

#: The published leaderboard rows (SKAB's README, outlier detection): F1, FAR %, MAR %.
PUBLISHED: tuple[tuple[str, float, float, float], ...] = (
    ("Conv-AE (windows of 60)", 0.78, 13.55, 28.02),
    ("MSET", 0.78, 39.73, 14.13),
    ("PCA T2+Q", 0.76, 26.62, 24.92),
    ("LSTM-AE", 0.74, 29.96, 25.92),
    ("Vanilla AE (row-wise)", 0.39, 2.59, 75.15),
    ("Isolation forest", 0.29, 2.56, 82.89),
)
SKAB_FOLDERS = ("valve1", "valve2", "other")
SKAB_TRAIN_ROWS = 400


def load_skab(root: str | Path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, list[str]]]:
    """``(name, times_s, x, labels, feature_names)`` of each labelled SKAB file (``;``-separated)."""

    files = []
    for folder in SKAB_FOLDERS:
        for path in sorted((Path(root) / folder).glob("*.csv"), key=lambda p: int(p.stem)):
            with open(path, newline="") as fh:
                reader = csv.reader(fh, delimiter=";")
                header = next(reader)
                rows = [r for r in reader if r]
            stamps = np.array(
                [dt.datetime.fromisoformat(r[0]).replace(tzinfo=dt.UTC).timestamp() for r in rows]
            )
            values = np.array([[float(v) for v in r[1:]] for r in rows])
            names = header[1:9]
            files.append(
                (
                    f"{folder}/{path.stem}",
                    stamps,
                    values[:, :8].astype(np.float32),
                    values[:, 8].astype(int),
                    names,
                )
            )
    if not files:
        raise SystemExit(f"{root}: no SKAB files under {', '.join(SKAB_FOLDERS)}")
    return files


def _confusion(flags: np.ndarray, labels: np.ndarray) -> np.ndarray:
    y = labels == 1
    return np.array([(flags & y).sum(), (flags & ~y).sum(), (~flags & ~y).sum(), (~flags & y).sum()])


def f1_far_mar(counts: np.ndarray) -> tuple[float, float, float]:
    """F1, FAR % and MAR % of summed ``[tp, fp, tn, fn]``."""
    tp, fp, tn, fn = (int(c) for c in counts)
    return 2 * tp / max(1, 2 * tp + fp + fn), 100 * fp / max(1, fp + tn), 100 * fn / max(1, fn + tp)


def flags_of(model_path: Path, x: np.ndarray, times: np.ndarray | None) -> np.ndarray:
    """``is_anomaly`` per row as a consumer computes it: through the Scorer, windows built by
    :class:`service.windows.WindowBuilder` for a windowed model (warm-up rows: False)."""

    scorer = Scorer.load(model_path)
    if scorer.window is None:
        return scorer.score(x).is_anomaly
    built = WindowBuilder(scorer.window, x.shape[1]).add(x, times=times)
    flags = np.zeros(len(x), dtype=bool)
    if len(built.rows):
        flags[built.rows] = scorer.score(built.samples).is_anomaly
    return flags


def train_one(
    x: np.ndarray,
    names: list[str],
    times: np.ndarray | None,
    labels: np.ndarray | None,
    out: Path,
    window: str | None,
    name: str,
) -> Any:
    """Train as `aeguard train` would: row-wise without ``window``, else `--window window --time-column`."""

    options = TrainOptions(name=name, source=name)
    if window is None:
        return train_model(x, names, out, labels=labels, options=options)

    context = RowContext(times, None, None if times is None else "timestamp", None)
    return train_windowed(
        x,
        names,
        out,
        labels=labels,
        context=context,
        window=WindowOptions(parse_window(window)),
        options=options,
    )


def skab_figures(root: str | Path, window: str | None, work: Path) -> dict[str, Any]:
    """The summed confusion matrix over SKAB's files for one way of training."""
    counts = np.zeros(4, dtype=np.int64)
    sizes = []
    started = time.perf_counter()
    for name, times, x, y, names in load_skab(root):
        out = work / f"skab-{name.replace('/', '-')}-{window or 'rows'}.onnx"
        result = train_one(x[:SKAB_TRAIN_ROWS], names, times[:SKAB_TRAIN_ROWS], None, out, window, name)
        sizes.append(result.metadata.window_size)
        flags = flags_of(out, x[SKAB_TRAIN_ROWS:], times[SKAB_TRAIN_ROWS:])
        counts += _confusion(flags, y[SKAB_TRAIN_ROWS:])
    f1, far, mar = f1_far_mar(counts)
    return {
        "f1": f1,
        "far": far,
        "mar": mar,
        "counts": counts.tolist(),
        "window_sizes": sizes,
        "seconds": round(time.perf_counter() - started, 1),
    }


def simulator_figures(window: str | None, work: Path) -> dict[str, Any]:
    """Per-kind recall (warning or higher) and the normal rows' false-positive rate on a fresh recording."""

    train = simulate_telemetry(DEFAULT_SIMULATION)
    fresh = simulate_telemetry(SimulatorConfig(seed=123))
    out = work / f"simulator-{window or 'rows'}.onnx"
    started = time.perf_counter()
    result = train_one(
        train.x,
        list(train.feature_names),
        train.timestamps_s.astype(np.float64),
        train.labels,
        out,
        window,
        DEFAULT_NAME,
    )
    flags = flags_of(out, fresh.x, fresh.timestamps_s.astype(np.float64))
    kinds = np.array(fresh.kinds)
    recall = {k: float(flags[kinds == k].mean()) for k in ANOMALY_KINDS if (kinds == k).any()}
    normal = fresh.labels == 0
    return {
        "recall": recall,
        "fpr": 100 * float(flags[normal].mean()),
        "window": result.metadata.window_size,
        "seconds": round(time.perf_counter() - started, 1),
    }


def format_skab(rows: list[tuple[str, dict[str, Any]]]) -> str:
    lines = [
        "SKAB, 34 files, first 400 rows train, rest scored; alert = is_anomaly",
        "",
        f"{'algorithm':<36} {'F1':>5} {'FAR %':>7} {'MAR %':>7}",
    ]
    for label, f in rows:
        lines.append(f"{label:<36} {f['f1']:>5.3f} {f['far']:>7.2f} {f['mar']:>7.2f}")
    for label, f1, far, mar in PUBLISHED:
        lines.append(f"{'published: ' + label:<36} {f1:>5.2f} {far:>7.2f} {mar:>7.2f}")
    return "\n".join(lines)


def format_simulator(rows: list[tuple[str, dict[str, Any]]]) -> str:
    kinds = list(rows[0][1]["recall"])
    lines = [
        "Simulator: trained on seed 0, scored on SimulatorConfig(seed=123); recall = warning or higher",
        "",
        f"{'model':<22} " + " ".join(f"{k:>13}" for k in kinds) + f" {'FPR % normal':>13}",
    ]
    for label, f in rows:
        lines.append(
            f"{label:<22} " + " ".join(f"{f['recall'][k]:>13.2f}" for k in kinds) + f" {f['fpr']:>13.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:

    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skab", metavar="DIR", help="SKAB's data folder (valve1/, valve2/, other/)")
    parser.add_argument("--simulator", action="store_true", help="per-kind recall on the simulator")
    parser.add_argument("--window", default="auto", help="the windowed side's --window (default: auto)")
    parser.add_argument("--no-rowwise", action="store_true", help="skip the row-wise side")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sides = ([] if args.no_rowwise else [("aeguard row-wise", None)]) + [
        (f"aeguard --window {args.window}", args.window)
    ]
    with tempfile.TemporaryDirectory(prefix="aeguard-bench-windows-") as tmp:
        work = Path(tmp)
        if args.skab:
            print(format_skab([(label, skab_figures(args.skab, w, work)) for label, w in sides]), flush=True)
        if args.simulator:
            print(format_simulator([(label, simulator_figures(w, work)) for label, w in sides]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
