"""Scale-out on Apache Spark: the same transform as the local engine, run by ``mapInArrow`` on executors.

The model file is shipped to the executors once (``SparkContext.addFile``); each Python worker
loads one :class:`~service.scorer.Scorer` for it, cached by the file's checksum, and scores every
Arrow batch with :func:`service.batch.rows.score_batch`, so Spark's output equals the local
engine's row for row. Output is Parquet, written to a temporary directory and renamed into place.

Entry points: ``aeguard score --engine spark [--master URL] ...``, or on a cluster::

    spark-submit --master yarn service/batch/spark.py --model model.onnx \\
        --input hdfs-or-local/dir --output scores.parquet

(the executors' Python needs aeguard installed, e.g. ``pip install 'aeguard[spark]'`` in the
cluster image). pyspark is imported only here, only when Spark is asked for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from service import cli
from service.batch.config import BAD_ROWS_REPORTED, BatchConfig
from service.batch.io import Input, atomic_directory
from service.batch.local import check_paths, empty_input_message
from service.batch.rows import ERROR_COLUMN, OutputSpec, ScoreFn, SeriesScorer, score_batch
from service.batch.summary import Summary
from service.errors import AeguardError, DataError
from service.scorer import Scorer
from service.window_scoring import CarriedWindows

log = logging.getLogger(__name__)

#: One scorer per executor Python worker and model checksum.
_SCORERS: dict[str, Scorer] = {}


def _executor_scorer(file_name: str, checksum: str, threads: int) -> Scorer:
    scorer = _SCORERS.get(checksum)
    if scorer is None:
        from pyspark import SparkFiles

        scorer = Scorer.load(SparkFiles.get(file_name), intra_op_threads=threads)
        _SCORERS[checksum] = scorer
    return scorer


@dataclass(frozen=True)
class ArrowScorer:
    """The function given to ``mapInArrow``: small and picklable; the model travels by ``addFile``."""

    file_name: str
    checksum: str
    threads: int
    spec: OutputSpec

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        scorer = _executor_scorer(self.file_name, self.checksum, self.threads)
        # One call per partition: a windowed model's series start afresh in each (they live in one).
        score_fn: ScoreFn | SeriesScorer = (
            CarriedWindows(scorer)
            if scorer.window is not None
            else lambda x, fe: scorer.score(x, with_feature_errors=fe)
        )
        for batch in batches:
            out, bad = score_batch(batch, self.spec, score_fn, self.spec.schema(batch.schema))
            if bad and not self.spec.flag_bad_rows:
                raise DataError(self._bad_rows_message(batch, bad))
            yield out

    def _bad_rows_message(self, batch: pa.RecordBatch, bad: list) -> str:
        # Spark does not know a row's position in the input; name it by its id column if there is one.
        id_column = self.spec.id_column
        shown = []
        for row in bad[:BAD_ROWS_REPORTED]:
            where = (
                f"row with {id_column}={batch.column(id_column)[row.index].as_py()!r}"
                if id_column
                else "a row"
            )
            shown.append(f"{where}: {row.reason}")
        return (
            "bad rows in the input, nothing was written: "
            + "; ".join(shown)
            + ". Fix the input, or pass --on-bad-rows flag to write such rows with an 'error' column."
        )


def _checksum(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _session(master: str | None):  # -> pyspark.sql.SparkSession
    """The active SparkSession, or a new one set up for loopback-only local mode when none runs."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    if master is None or master.startswith("local"):
        # Without it Spark binds a non-loopback address; executors must run this same Python.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("aeguard-score").config("spark.ui.enabled", "false")
    if master:
        builder = builder.master(master)
    return builder.getOrCreate(), True


_DATA_ERROR = re.compile(r"DataError: (.+)")


def run_spark(config: BatchConfig, spark=None) -> Summary:
    """Score ``config.input_path`` with Spark into a Parquet directory at ``config.output_path``."""
    check_paths(config)
    if Path(config.output_path).suffix.lower() != ".parquet":
        raise DataError(f"output {config.output_path}: the Spark engine writes Parquet; name it *.parquet")
    if "://" in config.input_path:  # a URI Spark reads (hdfs://, s3a://): no local checks
        kind = "csv" if config.input_path.lower().endswith(".csv") else "parquet"
    else:
        kind = Input(config.input_path).kind  # checks the path and its format before Spark starts
    scorer = Scorer.load(config.model_path, intra_op_threads=config.threads)
    metadata = scorer.metadata

    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    owned = False
    if spark is None:
        spark, owned = _session(config.master)
    if owned:  # a session we did not start keeps its own settings
        # The Arrow batches mapInArrow gets: --chunk-rows of the Spark engine (Spark's default: 10 000).
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(config.chunk_rows))
    started = time.perf_counter()
    try:
        reader = spark.read
        if kind == "csv":
            frame = reader.csv(config.input_path, header=True, inferSchema=True)
        else:
            frame = reader.parquet(config.input_path)
        spec = OutputSpec.for_config(metadata, frame.columns, config)
        frame = frame.select(*spec.input_columns)
        if metadata.is_windowed:
            frame, spec = _by_series(frame, spec)
        out_schema = spec.schema(to_arrow_schema(frame.schema))
        spark.sparkContext.addFile(str(Path(config.model_path).resolve()))
        scorer_fn = ArrowScorer(
            Path(config.model_path).name, _checksum(config.model_path), config.threads, spec
        )
        scored = frame.mapInArrow(scorer_fn, from_arrow_schema(out_schema))
        if metadata.is_windowed:  # back to input order, without the row number
            scored = scored.orderBy(ROW_COLUMN).drop(ROW_COLUMN)
        summary = Summary(
            engine=f"spark {spark.sparkContext.master}",
            model_name=metadata.name,
            model_version=metadata.version,
            input=str(config.input_path),
            output=str(config.output_path),
            anomalies={name: 0 for name in spec.severity_names[1:]},
        )
        with atomic_directory(config.output_path) as tmp:
            try:
                scored.write.parquet(str(tmp))
            except KeyboardInterrupt:
                spark.sparkContext.cancelAllJobs()
                raise
            except Exception as exc:
                found = _DATA_ERROR.search(str(exc))
                if found:
                    raise DataError(found.group(1).strip()) from None
                raise AeguardError(f"the Spark job failed: {str(exc).splitlines()[0][:500]}") from exc
            _count(spark.read.parquet(str(tmp)), summary)
            if summary.rows == 0 and not config.allow_empty:
                raise DataError(empty_input_message(config.input_path))
        summary.wall_s = time.perf_counter() - started
        return summary
    finally:
        if owned:
            spark.stop()


#: The input row number a windowed job sorts by (and restores input order with); not in the output.
ROW_COLUMN = "__aeguard_row"


def _by_series(frame, spec: OutputSpec):  # -> (DataFrame, OutputSpec)
    """Each series whole in one partition, in time order (ties: input order), numbered for the way back.

    Spark's partitions do not keep a file's row order (it packs file splits by size), so each series
    is sorted by its time column here, where the local engine refuses rows going back in time.
    Without a time column, input order is what Spark's row numbers say.
    """
    from pyspark.sql import functions as f

    frame = frame.withColumn(ROW_COLUMN, f.monotonically_increasing_id())
    frame = frame.repartition(spec.series_column) if spec.series_column else frame.repartition(1)
    keys = [c for c in (spec.series_column, spec.time_column) if c]
    frame = frame.sortWithinPartitions(*keys, ROW_COLUMN)
    return frame, dataclasses.replace(spec, carried=(*spec.carried, ROW_COLUMN))


def _count(written, summary: Summary) -> None:
    """Fill the summary's counts from the written output (a cheap columnar pass)."""
    from pyspark.sql import functions as f

    has_error = ERROR_COLUMN in written.columns
    for row in written.groupBy("severity").count().collect():
        summary.rows += row["count"]
        if row["severity"] is None:  # flagged bad rows
            continue
        summary.scored_rows += row["count"]
        if row["severity"] in summary.anomalies:
            summary.anomalies[row["severity"]] += row["count"]
    if has_error:
        summary.bad_rows = written.where(f.col(ERROR_COLUMN).isNotNull()).count()
    # Rows without a severity are bad rows or, for a windowed model, warm-up rows.
    summary.warm_up_rows = summary.rows - summary.scored_rows - summary.bad_rows


def main(argv: list[str] | None = None) -> int:
    """`aeguard score --engine spark`, for ``spark-submit service/batch/spark.py --model ... ...``."""
    return cli.main(["score", "--engine", "spark", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
