"""Helpers shared by the batch-job tests: input files made from the tiny data set, and running the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from service.cli import main


def tiny_table(tiny_dataset) -> pa.Table:
    """The tiny data set as a table: ``id``, ``f0``..``f7`` (float32), ``label``."""
    x, y = tiny_dataset.X, tiny_dataset.y
    columns = {"id": pa.array(np.arange(len(x), dtype=np.int64))}
    for j, name in enumerate(tiny_dataset.feature_names):
        columns[name] = pa.array(x[:, j])
    columns["label"] = pa.array(y.astype(np.int64))
    return pa.table(columns)


def write_parquet(table: pa.Table, path: Path, row_group_rows: int = 128) -> Path:
    pq.write_table(table, path, row_group_size=row_group_rows)
    return path


def score(*args: object) -> int:
    """Run `aeguard score ARGS` in this process; return its exit code."""
    return main(["score", "--no-progress", *(str(a) for a in args)])


def read_output(path: Path) -> pa.Table:
    if path.suffix == ".csv":
        import pyarrow.csv as pacsv

        return pacsv.read_csv(path)
    return pq.read_table(path)


def summary_json(stdout: str) -> dict:
    """The one JSON line `--json` prints."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, stdout
    return json.loads(lines[0])


def leftovers(directory: Path) -> list[str]:
    """Temporary files or directories an aborted job might have left behind."""
    return sorted(p.name for p in directory.iterdir() if ".aeguard-tmp-" in p.name)
