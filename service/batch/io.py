"""Streaming input (CSV, Parquet file, Parquet dataset directory) and atomic output (Parquet or CSV).

Input is read in chunks with pyarrow's streaming readers, so memory depends on the chunk size and
not on the file. Output goes to a hidden temporary path beside the target and is renamed onto it
only when the job has finished: a crashed or interrupted job leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from service.errors import DataError

log = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
CSV_SUFFIXES = (".csv",)
#: Bytes per CSV block handed to the parser; the block is then cut into chunks of rows.
CSV_BLOCK_BYTES = 8 << 20


def output_format(path: str | Path) -> str:
    """``parquet`` or ``csv`` from the output's extension; raise :class:`DataError` otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in CSV_SUFFIXES:
        return "csv"
    raise DataError(f"output {path}: unknown extension '{suffix}'; use .parquet or .csv")


class Input:
    """A CSV file, a Parquet file or a directory of Parquet files, read in chunks of rows."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            self.kind = "parquet"
        elif not self.path.is_file():
            raise DataError(f"input {path}: no such file or directory")
        elif self.path.suffix.lower() in PARQUET_SUFFIXES:
            self.kind = "parquet"
        elif self.path.suffix.lower() in CSV_SUFFIXES:
            self.kind = "csv"
        else:
            raise DataError(
                f"input {path}: unknown extension '{self.path.suffix}'; "
                "give a .csv or .parquet file or a directory of Parquet files"
            )
        self._files: list[Path] = []
        self._schema: pa.Schema | None = None
        if self.kind == "parquet":
            self._files = _parquet_files(self.path)
            if not self._files:
                raise DataError(f"input {path}: the directory holds no Parquet files")
            try:
                self._schema = pq.read_schema(self._files[0])
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(f"input {self._files[0]}: cannot read as Parquet ({exc})") from exc

    @property
    def names(self) -> list[str]:
        """The input's column names, read from the Parquet schema or the CSV header."""
        if self._schema is not None:
            return list(self._schema.names)
        with open(self.path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
        if not header:
            raise DataError(f"input {self.path}: empty CSV file (no header line)")
        return header

    @property
    def total_rows(self) -> int | None:
        """Row count from Parquet metadata (cheap); ``None`` for CSV, which would need a full pass."""
        if self._schema is None:
            return None
        try:
            return sum(pq.read_metadata(f).num_rows for f in self._files)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"input {self.path}: cannot read Parquet metadata ({exc})") from exc

    def read(
        self, columns: list[str], text_columns: list[str], chunk_rows: int
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """The schema of ``columns`` and an iterator of batches of at most ``chunk_rows`` rows, in order.

        ``text_columns`` (the features) are read from CSV as text, so a non-numeric value becomes
        a bad row to report rather than a parser failure in the middle of the file.
        """
        if self._schema is not None:
            schema = pa.schema([self._schema.field(c) for c in columns])
            return schema, _arrow_errors(self.path, self._parquet_batches(columns, chunk_rows))
        try:
            reader = pacsv.open_csv(
                str(self.path),
                read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                convert_options=pacsv.ConvertOptions(
                    include_columns=columns,
                    column_types={c: pa.string() for c in text_columns},
                    strings_can_be_null=True,
                ),
            )
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"input {self.path}: cannot read as CSV ({exc})") from exc
        return reader.schema, _arrow_errors(self.path, _rechunk(reader, chunk_rows))

    def _parquet_batches(self, columns: list[str], chunk_rows: int) -> Iterator[pa.RecordBatch]:
        # File by file, in path order. Not the dataset scanner: it reads ahead without bound when
        # the consumer is slower than the disk, and pre-buffering keeps every row group of a file
        # until the file is done. Measured on 5 M rows x 32 float32 columns, peak RSS while
        # scoring: scanner 0.9-1.4 GB; this 0.2 GB, and the read is still ~4% of the job's time.
        for file in self._files:
            with pq.ParquetFile(file, pre_buffer=False) as parquet:
                yield from parquet.iter_batches(batch_size=chunk_rows, columns=columns)


def _parquet_files(path: Path) -> list[Path]:
    """The file itself, or a directory's files in path order, skipping hidden and ``_``-prefixed names
    (``_SUCCESS``, ``.crc`` files), as Arrow's and Spark's dataset readers do."""
    if path.is_file():
        return [path]
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    )


def _rechunk(batches: Iterator[pa.RecordBatch], chunk_rows: int) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        for start in range(0, batch.num_rows, chunk_rows):
            yield batch.slice(start, chunk_rows)


def _arrow_errors(path: Path, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Re-raise a reader's failure in the middle of a file as a :class:`DataError` naming the file."""
    try:
        yield from batches
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"input {path}: {exc}") from exc


def _temporary_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.aeguard-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove temporaries beside ``path`` left by jobs that were killed outright (SIGKILL, power loss).

    Only those whose writer process no longer exists; a job still running keeps its own.
    """
    removed = []
    for tmp in path.parent.glob(f".{path.name}.aeguard-tmp-*"):
        pid_text = tmp.name.rsplit(".aeguard-tmp-", 1)[1].split("-", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        log.info("removed %s, left by an earlier job that was killed", tmp)
        removed.append(tmp)
    return removed


class AtomicWriter:
    """Write batches to a hidden temporary file; :meth:`commit` renames it onto the target.

    Used as a context manager: leaving the block without :meth:`commit` (an error, Ctrl-C)
    removes the temporary file, so the target is either the previous one or the complete new one.
    """

    def __init__(self, path: str | Path, schema: pa.Schema) -> None:
        self.path = Path(path)
        self.format = output_format(self.path)
        if self.path.is_dir():
            raise DataError(
                f"output {path} is a directory (a Spark engine's output?); remove it or choose another path"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"output {path}: cannot create its directory ({exc})") from exc
        remove_stale_temporaries(self.path)
        self.tmp_path = _temporary_beside(self.path)
        self.schema = schema
        self._writer: pq.ParquetWriter | pacsv.CSVWriter | None = None
        self.committed = False

    def __enter__(self) -> AtomicWriter:
        try:
            with self._errors():
                self._open()
        except BaseException:
            # An interrupt (Ctrl-C, SIGTERM) can land after the writer created the file but before
            # the `with` block holds this object, and then __exit__ never runs: remove it here.
            self.__exit__(None, None, None)
            raise
        return self

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """A full disk or a read-only directory: a :class:`DataError` naming the output."""
        try:
            yield
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"output {self.path}: cannot write ({exc})") from exc

    def _open(self) -> None:
        if self.format == "parquet":
            # Dictionary encoding only pays for text (severity, feature names); on float scores
            # it is tried and abandoned per page, which made writing 2.5x slower.
            text = [
                f.name for f in self.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
            ]
            self._writer = pq.ParquetWriter(str(self.tmp_path), self.schema, use_dictionary=text)
        else:
            self._writer = pacsv.CSVWriter(str(self.tmp_path), self.schema)

    def write(self, batch: pa.RecordBatch) -> None:
        assert self._writer is not None
        if batch.num_rows:
            with self._errors():
                self._writer.write_batch(batch)

    def commit(self) -> None:
        """Finish the file and move it onto the target in one rename."""
        assert self._writer is not None
        with self._errors():
            self._writer.close()
            self._writer = None
            os.replace(self.tmp_path, self.path)
        self.committed = True

    def __exit__(self, *exc_info: object) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        if not self.committed:
            with contextlib.suppress(FileNotFoundError):
                self.tmp_path.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path``, else it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = _temporary_beside(target)
    try:
        yield tmp
        old = None
        if target.exists():
            # A non-empty directory cannot be renamed onto; move the old one aside first.
            old = _temporary_beside(target)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
