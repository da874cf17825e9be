"""`aeguard train --window W|auto [--time-column COL] [--series-column COL]`: a windowed model.

Argument checks, data loading and the summary here; the training is :func:`training.api.train_model`
with the registry's windowed entry (:func:`training.api.train_windowed`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.artifact import describe_parity, describe_threshold
from service.cli_inspect import describe_window
from service.errors import InvalidInputError
from training import defaults
from training.registry import WINDOWED

#: The built-in telemetry's time column (``training.data.simulator``: one row per 120 s).
DEFAULT_TIME_COLUMN = "timestamp"


def check_window_args(args: argparse.Namespace) -> None:
    """Refuse what a windowed model does not support (yet), naming the option."""
    if args.window is None:
        raise InvalidInputError("--time-column and --series-column apply with --window W|auto")
    for flag, on in (
        ("--semi-supervised", args.semi_supervised),
        ("--report", bool(args.report)),
        (
            "--architecture " + str(args.architecture),
            args.architecture not in (defaults.ARCHITECTURE, WINDOWED),
        ),
    ):
        if on:
            raise InvalidInputError(f"{flag} is not available with --window (docs/windows.md, 'Not yet')")
    if args.default and args.series_column:
        raise InvalidInputError(
            "the built-in telemetry is one series: --series-column does not apply with --default"
        )


def _load(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """``(dataset, row context, model name)``; the time and series columns are not features."""
    import numpy as np

    from training.data.samples import RowContext
    from training.data.tables import load_dataset
    from training.data.windows import load_context

    if args.default:
        from training.builtin import DEFAULT_NAME, DEFAULT_SIMULATION, default_dataset
        from training.data.simulator import simulate_telemetry

        data = default_dataset(save_to=args.save_data)
        times = simulate_telemetry(DEFAULT_SIMULATION).timestamps_s.astype(np.float64)
        return data, RowContext(times, None, DEFAULT_TIME_COLUMN, None), args.name or DEFAULT_NAME
    skip = [c for c in (args.time_column, args.series_column) if c]
    excluded = [c.strip() for c in (args.exclude_columns or "").split(",") if c.strip()]
    data = load_dataset(
        args.data,
        label_column=args.label_column,
        feature_columns=args.feature_columns,
        exclude_columns=[*excluded, *[c for c in skip if c not in excluded]] or None,
    )
    context = load_context(args.data, args.time_column, args.series_column)
    return data, context, args.name or Path(args.data).stem


def run_windowed(args: argparse.Namespace, make_options: Callable[..., Any]) -> int:
    """Train, export and print the summary of a windowed model."""
    import json
    import sys

    check_window_args(args)
    from training.data.windows import WindowOptions, parse_window

    window = WindowOptions(parse_window(args.window))
    data, context, name = _load(args)
    from training.api import train_windowed

    result = train_windowed(
        data.x, data.feature_names, args.out, labels=data.labels, context=context, window=window,
        options=make_options(args, data.source, name),
    )  # fmt: skip
    if args.json:
        print(json.dumps(json.loads(result.metadata.to_json()), indent=2, sort_keys=True))
    else:
        print(format_window_summary(result))
    sys.stdout.flush()
    return 0


def format_window_summary(result: Any) -> str:
    """The lines printed after `aeguard train --window` (``result``: a
    :class:`~training.result.TrainResult`)."""
    meta = result.metadata
    arch, train, ev = meta.architecture, meta.training, meta.evaluation
    cross = train["crossfit"]
    lines = [
        ("model", f"{result.path} ({meta.name} {meta.version})"),
        ("window", describe_window(meta.window)),
        (
            "data",
            f"{train['rows']} rows -> {train['windows']} windows ({train['trainable_windows']} all-normal)",
        ),
        (
            "network",
            f"windowed, channels {', '.join(arch['channels'])}: "
            + " -> ".join(map(str, arch["layer_sizes"] + arch["layer_sizes"][-2::-1]))
            + f" {arch['activation']}",
        ),
        (
            "training",
            f"{train['epochs_run']} epochs (best {train['best_epoch']}); {cross['folds']} time-blocked "
            f"folds (fits {cross['fold_fit_s']:.1f} s, final {cross['final_fit_s']:.1f} s)",
        ),
    ]
    for t in meta.thresholds:
        lines.append((f"  {t.name}", f">= {t.value:.5g} ({describe_threshold(t)})"))
    if ev.get("roc_auc") is not None:
        lines.append(
            ("quality", f"ROC-AUC {ev['roc_auc']:.4f}  PR-AUC {ev['pr_auc']:.4f} (out-of-fold windows)")
        )
    if meta.export:
        lines.append(("parity", describe_parity(meta.export)))
    return "\n".join(f"{k:<10} {v}" for k, v in lines)
