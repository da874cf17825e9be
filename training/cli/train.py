"""`aeguard train`: argument definitions here; the work (and torch) is imported inside :func:`run`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.errors import InvalidInputError
from training import defaults
from training.registry import ARCHITECTURES, WINDOWED

if TYPE_CHECKING:
    from training.data.samples import RowContext
    from training.data.tables import Dataset
    from training.result import TrainOptions, TrainResult


def _int_list(text: str) -> list[int]:
    try:
        sizes = [int(p) for p in text.replace(" ", "").split(",") if p]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 64,32, got '{text}'") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be >= 1, got '{text}'")
    return sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Define the `train` options (no heavy imports here)."""
    parser.add_argument(
        "data",
        nargs="?",
        help="CSV (header row), Parquet, or NPZ with arrays X and optional y",
    )
    parser.add_argument("--out", required=True, metavar="MODEL.onnx", help="where to write the model")
    parser.add_argument(
        "--default",
        action="store_true",
        help="train on the built-in simulated service telemetry instead of DATA",
    )
    parser.add_argument(
        "--save-data",
        metavar="FILE",
        help="with --default or --prometheus: also write the data trained on (.csv or .parquet)",
    )
    _add_prometheus_arguments(parser.add_argument_group("Prometheus as the data (docs/watch.md)"))
    _add_data_arguments(parser.add_argument_group("data"))
    _add_network_arguments(parser.add_argument_group("network"))
    _add_optimisation_arguments(parser.add_argument_group("optimisation"))
    _add_output_arguments(parser.add_argument_group("thresholds and output"))


def _add_prometheus_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--prometheus", metavar="URL", help="train on metric history from this Prometheus")
    g.add_argument(
        "--query", action="append", metavar="NAME=PROMQL", help="repeatable: one feature per query"
    )
    g.add_argument("--start", metavar="T", help="RFC 3339, unix seconds or now-7d")
    g.add_argument("--end", metavar="T", default="now", help="RFC 3339, unix seconds or now (default)")
    g.add_argument("--step", metavar="DURATION", help="one row per step and group, e.g. 30s")
    g.add_argument("--group-by", metavar="LABEL[,LABEL]", help="one series per value, e.g. instance")
    g.add_argument("--prometheus-bearer-token-file", metavar="FILE", default="")
    g.add_argument("--prometheus-username", metavar="USER", default="", help="basic auth")
    g.add_argument("--prometheus-password-file", metavar="FILE", default="")
    g.add_argument("--prometheus-ca-file", metavar="PEM", default="", help="CA of an https Prometheus")


def _add_data_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--label-column", metavar="NAME", help="0 = normal, 1 = anomaly (CSV / Parquet)")
    g.add_argument("--feature-columns", metavar="A,B,...", help="use only these columns")
    g.add_argument("--exclude-columns", metavar="A,B,...", help="leave these columns out")
    g.add_argument(
        "--contaminated",
        action="store_true",
        help="train on all rows, anomalies included (default with labels: normal rows only)",
    )
    g.add_argument(
        "--semi-supervised",
        action="store_true",
        help="few labels: the label column may be empty (unknown) where 1 = anomaly, 0 = normal; the "
        "autoencoder pretrains on every row not labelled anomalous, then an anomaly head on its "
        "fine-tuned encoder learns from the labels (score = -log(1 - p))",
    )
    g.add_argument(
        "--window",
        metavar="W|auto",
        help="windowed model: each sample is the W consecutive rows of a series that end at a row (its "
        "score belongs to that row); 'auto' picks W from the data's autocorrelation (docs/windows.md)",
    )
    g.add_argument(
        "--time-column",
        metavar="COL",
        help="with --window: the column that orders rows (date-times or seconds); rows are sorted by it "
        "within each series, and a jump of more than 3 usual steps restarts the window (default with "
        "--default: timestamp)",
    )
    g.add_argument(
        "--series-column", metavar="COL", help="with --window: the column naming each row's series"
    )


def _add_network_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--architecture",
        default=defaults.ARCHITECTURE,
        metavar="KIND",
        help="; ".join(f"{a.name} ({a.summary})" for a in ARCHITECTURES.values())
        + f" (default: {defaults.ARCHITECTURE})",
    )
    g.add_argument(
        "--kl-weight",
        type=float,
        default=defaults.KL_WEIGHT,
        metavar="BETA",
        help=f"vae: weight of the KL term, 1 = the ELBO (default: {defaults.KL_WEIGHT:g})",
    )
    g.add_argument(
        "--kl-warmup",
        type=int,
        default=defaults.KL_WARMUP_EPOCHS,
        metavar="EPOCHS",
        help=f"vae: epochs over which the KL weight rises from 0 (default: {defaults.KL_WARMUP_EPOCHS})",
    )
    g.add_argument("--hidden", type=_int_list, metavar="64,32", help="encoder hidden sizes (default from d)")
    g.add_argument("--coding-size", type=int, metavar="K", help="coding width (default ~sqrt(d), < d)")
    g.add_argument(
        "--allow-overcomplete",
        action="store_true",
        help="accept a coding size >= the number of features (warns: the model may copy its input)",
    )
    g.add_argument("--tied-weights", action="store_true", help="decoder weights = encoder weights transposed")
    g.add_argument(
        "--denoise", type=float, default=0.0, metavar="SIGMA", help="Gaussian input noise while training"
    )
    g.add_argument(
        "--activation",
        default=defaults.ACTIVATION,
        metavar="NAME[,NAME...]",
        help="hidden layers: relu, elu, tanh or gelu; a comma-separated list trains one network per "
        f"entry and averages their scores in the one model (default: {defaults.ACTIVATION})",
    )


def _add_optimisation_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--max-epochs", type=int, default=defaults.MAX_EPOCHS)
    g.add_argument("--patience", type=int, default=defaults.PATIENCE, help="early-stopping patience (epochs)")
    g.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE)
    g.add_argument("--lr", type=float, default=defaults.LEARNING_RATE, help="Adam learning rate")
    g.add_argument("--seed", type=int, default=defaults.SEED, help="same data + seed = same scores")
    g.add_argument(
        "--crossfit-folds",
        type=int,
        default=defaults.CROSSFIT_FOLDS,
        metavar="K",
        help="K >= 2: thresholds and evaluation from out-of-fold scores of K fold fits, the served "
        "networks trained on all normal rows but a validation slice (K + 1 fits); 0: one fit on 60 %% "
        f"of them, 15 %% held out to calibrate (default: {defaults.CROSSFIT_FOLDS})",
    )


def _add_output_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--threshold",
        action="append",
        metavar="NAME=SPEC",
        help="repeatable: NAME=q0.99 (quantile of calibration scores), NAME=fpr0.001 (false-positive "
        "rate), NAME=f1 (F1-optimal, needs labels), NAME=fixed2.5; the lowest decides is_anomaly "
        f"(default: {' '.join(defaults.DEFAULT_THRESHOLDS)})",
    )
    g.add_argument("--name", help="model name (default: the data file's stem)")
    g.add_argument("--model-version", help="model version (default: a hash of data and options)")
    g.add_argument("--report", metavar="DIR", help="write a report with plots (index.html) to DIR")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--json", action="store_true", help="print the metadata as JSON instead of the summary")


def _check_args(args: argparse.Namespace) -> None:
    sources = [bool(args.data), bool(args.default), bool(args.prometheus)]
    if sum(sources) > 1:
        raise InvalidInputError("give one of DATA, --default or --prometheus URL")
    if not any(sources):
        raise InvalidInputError(
            "give a DATA file to train on, --default for the built-in telemetry data, or --prometheus URL"
        )
    if args.save_data and not (args.default or args.prometheus):
        raise InvalidInputError("--save-data only applies with --default or --prometheus")
    if args.prometheus and (args.semi_supervised or args.label_column):
        raise InvalidInputError(
            "--prometheus data has no labels: leave out --semi-supervised / --label-column"
        )
    if not args.prometheus and (args.query or args.start or args.step or args.group_by):
        raise InvalidInputError("--query, --start, --step and --group-by need --prometheus URL")
    if args.semi_supervised:
        if args.default:
            raise InvalidInputError("--semi-supervised needs a DATA file with labels, not --default")
        if args.contaminated:
            raise InvalidInputError(
                "--contaminated does not apply with --semi-supervised (which pretrains on unlabelled rows)"
            )
        if not args.label_column and not str(args.data).lower().endswith(".npz"):
            raise InvalidInputError(
                "--semi-supervised needs --label-column NAME (1 = anomaly, 0 = normal, empty = unknown)"
            )
    for flag, value, low in (
        ("--max-epochs", args.max_epochs, 1),
        ("--patience", args.patience, 1),
        ("--batch-size", args.batch_size, 1),
        ("--coding-size", args.coding_size, 1),
    ):
        if value is not None and value < low:
            raise InvalidInputError(f"{flag} must be >= {low}, got {value}")
    if args.crossfit_folds < 0 or args.crossfit_folds == 1:
        raise InvalidInputError(f"--crossfit-folds must be 0 (off) or >= 2, got {args.crossfit_folds}")
    if not args.lr > 0:
        raise InvalidInputError(f"--lr must be > 0, got {args.lr}")
    unknown = defaults.unknown_activations(args.activation)
    if unknown:
        raise InvalidInputError(
            f"--activation: unknown {', '.join(repr(a) for a in unknown)}; choose from "
            f"{', '.join(defaults.ACTIVATION_NAMES)} (comma-separated for an ensemble)"
        )
    if args.denoise < 0:
        raise InvalidInputError(f"--denoise must be >= 0, got {args.denoise}")
    if args.architecture not in ARCHITECTURES:
        raise InvalidInputError(
            f"--architecture: unknown {args.architecture!r}; choose from {', '.join(ARCHITECTURES)}"
        )
    if not 0 <= args.kl_weight < float("inf") or args.kl_warmup < 0:
        raise InvalidInputError(
            f"--kl-weight must be finite and >= 0 and --kl-warmup >= 0, got {args.kl_weight} and "
            f"{args.kl_warmup}"
        )


def run(args: argparse.Namespace) -> int:
    """Load the data, train, export, and print a summary (and write the report)."""
    import json
    import sys

    _check_args(args)
    if args.architecture == WINDOWED and args.window is None:
        args.window = "auto"  # `--architecture windowed` is `--window auto`
    if args.window is not None or args.time_column or args.series_column:
        from training.cli.window import run_windowed

        return run_windowed(args, _options)
    from training.calibration import thresholds as calibrate

    calibrate.parse_threshold_specs(args.threshold or defaults.DEFAULT_THRESHOLDS)  # fail before loading
    source_entry, context = None, None
    if args.prometheus:
        data, source_entry, context = _prometheus_dataset(args)
        name = args.name or "prometheus"
    else:
        data, name = _load(args)
    # torch loads only now, so bad input is refused in a fraction of a second.
    from training.api import train_model
    from training.cli.progress import EpochProgress
    from training.fitting.fit import member_configs
    from training.report.summary import format_summary

    options = _options(args, data.source, name)
    members = len(member_configs(options.fit))
    with EpochProgress(args.max_epochs * members, enabled=not args.no_progress) as progress:
        result = train_model(
            data.x,
            data.feature_names,
            None if source_entry else args.out,
            labels=data.labels,
            options=options,
            on_epoch=progress,
            on_fit_end=progress.close,
            context=context,
        )
    if source_entry is not None:
        _export_with_source(result, source_entry, args.out)
    report_index = None
    if args.report:
        from training.report.html import write_report

        report_index = write_report(result, args.report)
    if args.json:
        print(json.dumps(json.loads(result.metadata.to_json()), indent=2, sort_keys=True))
    else:
        print(format_summary(result, report_index))
    sys.stdout.flush()
    return 0


def _load(args: argparse.Namespace) -> tuple[Dataset, str]:
    """The data set to train on (a file, or the built-in telemetry) and the model's name."""
    from training.data.tables import load_dataset

    if args.default:
        from training.builtin import DEFAULT_NAME, default_dataset

        return default_dataset(save_to=args.save_data), args.name or DEFAULT_NAME
    data = load_dataset(
        args.data,
        label_column=args.label_column,
        feature_columns=args.feature_columns,
        exclude_columns=args.exclude_columns,
        allow_unlabelled=args.semi_supervised,
    )
    if args.semi_supervised and data.labels is None:
        raise InvalidInputError(f"{data.source}: --semi-supervised needs labels; this NPZ has no array 'y'")
    return data, args.name or Path(args.data).stem


def _options(args: argparse.Namespace, source: str, name: str) -> TrainOptions:
    from training.fitting.fit import FitConfig  # torch
    from training.result import TrainOptions

    return TrainOptions(
        fit=FitConfig(
            hidden=args.hidden,
            coding_size=args.coding_size,
            tied_weights=args.tied_weights,
            denoise_sigma=args.denoise,
            max_epochs=args.max_epochs,
            patience=args.patience,
            batch_size=args.batch_size,
            lr=args.lr,
            activation=args.activation,
            seed=args.seed,
            architecture=args.architecture,
            kl_weight=args.kl_weight,
            kl_warmup_epochs=args.kl_warmup,
        ),
        thresholds=tuple(args.threshold or defaults.DEFAULT_THRESHOLDS),
        name=name,
        version=args.model_version,
        contaminated=args.contaminated,
        allow_overcomplete=args.allow_overcomplete,
        crossfit_folds=args.crossfit_folds,
        source=source,
        semi_supervised=args.semi_supervised,
    )


def _prometheus_dataset(args: argparse.Namespace) -> tuple[Dataset, dict[str, Any], RowContext]:
    """The aligned history of ``--query`` ... as a Dataset, the metadata entry `aeguard watch` reads, and
    each row's time and group (series), which a windowed kind builds its windows from."""
    import logging

    import numpy as np

    from service.watch.history import fetch_history
    from service.watch.prometheus import PrometheusAccess, PrometheusClient
    from service.watch.spec import parse_group_by, parse_queries, source_entry
    from service.watch.times import parse_duration, parse_time
    from training.data.samples import RowContext
    from training.data.tables import Dataset, check_matrix

    queries = parse_queries(args.query or [])
    if not args.start or not args.step:
        raise InvalidInputError("--prometheus needs --start T and --step DURATION (and --end, default now)")
    step_s = parse_duration(args.step, "--step")
    start, end = parse_time(args.start, "--start"), parse_time(args.end, "--end")
    if end <= start:
        raise InvalidInputError(f"--end ({args.end}) must be after --start ({args.start})")
    group_by = parse_group_by(args.group_by)
    access = PrometheusAccess(
        url=args.prometheus,
        bearer_token_file=args.prometheus_bearer_token_file,
        username=args.prometheus_username,
        password_file=args.prometheus_password_file,
        ca_file=args.prometheus_ca_file,
        timeout_s=60.0,
    )
    table = fetch_history(PrometheusClient(access), queries, start, end, step_s, group_by)
    dropped = dict(sorted(table.skipped.items()))
    logging.getLogger(__name__).info(
        "%s: %d rows in %d group(s); dropped %s",
        args.prometheus,
        table.n_rows,
        len(table.groups),
        dropped or "none",
    )
    if args.save_data:
        table.write(args.save_data)
    if table.n_rows < 2:
        raise InvalidInputError(
            f"{args.prometheus}: the queries gave {table.n_rows} complete row(s) between --start and --end "
            f"(dropped: {dropped or 'none'}); check the queries and the time range"
        )
    x, _ = check_matrix(table.x, table.feature_names)
    described = f"prometheus {args.prometheus}: {len(queries)} queries, step {args.step}"
    entry = source_entry(
        queries,
        step_s,
        group_by,
        start,
        end,
        rows=table.n_rows,
        groups=len(table.groups),
        rows_dropped=dropped,
    )
    names = np.array(["/".join(key) for key in table.groups] or [""], dtype=object)
    context = RowContext(time=table.timestamps, series=names[table.group_index])
    return Dataset(x, list(table.feature_names), None, described), entry, context


def _export_with_source(result: TrainResult, entry: dict[str, Any], out: str) -> None:
    """Export with the Prometheus source in the metadata (``training.prometheus``): `aeguard watch`
    reads the queries, step and grouping from the model file alone."""
    from dataclasses import replace

    from service.watch.spec import SOURCE_KEY
    from training.api import export_model

    result.metadata = replace(result.metadata, training={**result.metadata.training, SOURCE_KEY: entry})
    export_model(result, out)
