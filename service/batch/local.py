"""The streaming engine: read a chunk, score it, write it, repeat; in this process or through a server.

Memory is bounded by ``chunk_rows`` (plus the readers' small read-ahead), never by the input size.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow.compute as pc
from tqdm import tqdm

from service.artifact import ModelMetadata
from service.batch.config import BAD_ROWS_REPORTED, BatchConfig
from service.batch.io import AtomicWriter, Input, output_format
from service.batch.pipeline import ReadAhead, WriteBehind
from service.batch.rows import BadRow, OutputSpec, ScoreFn, SeriesScorer, score_batch, split_rows
from service.batch.summary import Summary
from service.errors import DataError

log = logging.getLogger(__name__)


def check_paths(config: BatchConfig) -> None:
    """Refuse an output that would overwrite the input, has no known format or no directory to go in."""
    output_format(config.output_path)
    if Path(config.output_path).resolve() == Path(config.input_path).resolve():
        raise DataError(f"output {config.output_path} is the input file; choose another path")
    parent = Path(config.output_path).parent
    if not parent.is_dir():
        # A typo in a path should not silently grow a directory tree; the user creates it on purpose.
        problem = "is not a directory" if parent.exists() else "does not exist; create it first"
        raise DataError(f"output {config.output_path}: {parent} {problem}")


def empty_input_message(path: str) -> str:
    """Why an input without rows is refused, as `aeguard train` and `evaluate` refuse one."""
    # A scheduled job that finds no rows usually means the producer broke; failing makes that visible
    # (the run pushes no success, so the staleness alert fires) instead of writing an empty result.
    return (
        f"input {path} has no rows (only a header, or no data): nothing to score, nothing was written; "
        "--allow-empty writes an empty output instead"
    )


def bad_rows_message(bad: Sequence[BadRow], offset: int, csv_input: bool) -> str:
    """Name the first bad rows by their 1-based data-row number in the input (and CSV line)."""
    shown = []
    for row in bad[:BAD_ROWS_REPORTED]:
        number = offset + row.index + 1
        where = f"row {number}" + (f" (line {number + 1})" if csv_input else "")
        shown.append(f"{where}: {row.reason}")
    more = (
        f" (and {len(bad) - BAD_ROWS_REPORTED} more in the same chunk)"
        if len(bad) > BAD_ROWS_REPORTED
        else ""
    )
    return (
        "bad rows in the input, nothing was written: "
        + "; ".join(shown)
        + more
        + ". Fix the input, or pass --on-bad-rows flag to write such rows with an 'error' column."
    )


def _terminal_size() -> dict[str, int]:
    """tqdm's ``ncols``/``nrows``: a terminal that reports 0 x 0 (a bare pty) would hide the bar."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except OSError:
        return {"ncols": 100, "nrows": 24}
    return {"ncols": size.columns or 100, "nrows": size.lines or 24}


def score_file(
    config: BatchConfig, metadata: ModelMetadata, score_fn: ScoreFn | SeriesScorer, engine: str
) -> Summary:
    """Score ``config.input_path`` into ``config.output_path`` chunk by chunk, atomically.

    A windowed model's ``score_fn`` (a :class:`SeriesScorer`) carries each series' last rows from
    one chunk to the next, so chunk boundaries change nothing; memory still grows with the chunk
    size and the number of series, not with the input.
    """
    check_paths(config)
    source = Input(config.input_path)
    spec = OutputSpec.for_config(metadata, source.names, config)
    schema, batches = source.read(spec.input_columns, list(spec.feature_names), config.chunk_rows)
    out_schema = spec.schema(schema)
    summary = Summary(
        engine=engine,
        model_name=metadata.name,
        model_version=metadata.version,
        input=str(config.input_path),
        output=str(config.output_path),
        anomalies={name: 0 for name in spec.severity_names[1:]},
    )
    started = time.perf_counter()
    show = config.progress and sys.stderr.isatty()
    with (
        AtomicWriter(config.output_path, out_schema) as writer,
        tqdm(
            total=source.total_rows,
            unit=" rows",
            unit_scale=True,
            disable=not show,
            file=sys.stderr,
            mininterval=0.5,
            **(_terminal_size() if show else {}),
        ) as bar,
        ReadAhead(split_rows(batch, spec) for batch in batches) as splits,
        WriteBehind(writer.write) as write_behind,
    ):
        for split in splits:
            out, bad = score_batch(split, spec, score_fn, out_schema)
            if bad and not spec.flag_bad_rows:
                raise DataError(bad_rows_message(bad, summary.rows, source.kind == "csv"))
            write_behind.submit(out)
            summary.rows += out.num_rows
            summary.bad_rows += len(bad)
            unscored = out.column("score").null_count
            summary.scored_rows += out.num_rows - unscored
            summary.warm_up_rows += unscored - len(bad)
            for item in pc.value_counts(out.column("severity")).to_pylist():
                if item["values"] in summary.anomalies:
                    summary.anomalies[item["values"]] += item["counts"]
            bar.update(out.num_rows)
        if summary.rows == 0 and not config.allow_empty:
            raise DataError(empty_input_message(config.input_path))
        write_behind.wait()
        writer.commit()
    summary.wall_s = time.perf_counter() - started
    log.debug("batch job done: %s", summary.to_json())
    return summary
