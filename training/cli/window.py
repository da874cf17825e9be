"""`aeguard train --window W|auto [--time-column COL] [--series-column COL]`: a windowed model.

Argument checks and data loading here; the training is :func:`training.fitting.window.train_windowed`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.errors import InvalidInputError
from training import defaults

#: The built-in telemetry's time column (``training.data.simulator``: one row per 120 s).
DEFAULT_TIME_COLUMN = "timestamp"


def check_window_args(args: argparse.Namespace) -> None:
    """Refuse what a windowed model does not support (yet), naming the option."""
    if args.window is None:
        raise InvalidInputError("--time-column and --series-column apply with --window W|auto")
    for flag, on in (
        ("--semi-supervised", args.semi_supervised),
        ("--report", bool(args.report)),
        ("--architecture " + str(args.architecture), args.architecture != defaults.ARCHITECTURE),
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

    from training.data.tables import load_dataset
    from training.data.windows import RowContext, load_context

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
    from training.fitting.window import WindowOptions, parse_window

    window = WindowOptions(parse_window(args.window))
    data, context, name = _load(args)
    from training.fitting.window import format_window_summary, train_windowed

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
