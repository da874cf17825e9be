"""`make bench` end to end, shrunk: every workload measured on every server and in-process, interleaved.

Figures are not asserted (no timed assertions); the run must complete, measure every cell without
errors, sum CPU over the multi-process server's whole tree, and write a JSON record whose ratios
follow from its per-round rates (aeguard against the faster no-op of the same round).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.bench import wire

SERVERS = ("ae_default", "ae_1", "noop_sync", "noop_aio")


def test_bench_server_part_runs_end_to_end(tiny_model_path: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "bench"
    argv = [
        sys.executable, "-m", "service.bench", "--only", "server", "--model", str(tiny_model_path),
        "--duration-s", "0.2", "--warmup-s", "0.15", "--concurrency", "8", "--batch-rows", "64",
        "--batch-in-flight", "2", "--client-processes", "2", "--channels", "2", "--repeat", "2",
        "--server-arg=--processes=2", "--out-dir", str(out_dir),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "aeN/no-op" in proc.stdout and "target (issue 14)" in proc.stdout  # tables printed
    assert "2 grpc.aio client processes x 2 channels each" in proc.stdout

    doc = json.loads((out_dir / "latest.json").read_text())
    server = doc["server"]
    assert server["model"]["name"] == "tiny"
    assert server["settings"]["aeguard_default_processes"] == 2
    rows = {(r["method"], r["rows"], r["in_flight"]): r for r in server["rows"]}
    assert list(rows) == [("Score", 1, 8), ("Score", 64, 2), ("ScoreStream", 64, 2)]
    for row in rows.values():
        key = row["rate_key"]
        for side in (*SERVERS, "in_process"):
            assert row[side][key] > 0, (row["workload"], side)
            assert len(row[side]["rounds"]) == 2 and row[side][key] in row[side]["rounds"]
        for side in SERVERS:
            assert row[side]["errors"] == 0, row[side].get("first_error")
            assert row[side]["p50_ms"] <= row[side]["p99_ms"]
        floor = np.maximum(row["noop_sync"]["rounds"], row["noop_aio"]["rounds"])
        paired = np.asarray(row["ae_default"]["rounds"]) / floor
        assert row["ae_default_vs_noop"] == pytest.approx(float(np.median(paired)))
        paired = np.asarray(row["ae_default"]["rounds"]) / np.asarray(row["in_process"]["rounds"])
        assert row["ae_default_vs_in_process"] == pytest.approx(float(np.median(paired)))
        # The supervisor and both workers are in the CPU sum; the no-op is one process.
        assert len(row["ae_default"]["server_cpu_cores_by_pid"]) >= 3
        assert len(row["ae_1"]["server_cpu_cores_by_pid"]) == 1
    # The micro-batcher runs only on batch 1 with 8 or more in flight.
    assert "ae_mb" in rows[("Score", 1, 8)] and "ae_mb" not in rows[("Score", 64, 2)]
    assert rows[("Score", 1, 8)]["ae_mb_vs_ae_default"] > 0
    # The 8 calls in flight were split over both client processes.
    assert rows[("Score", 1, 8)]["ae_default"]["client_processes"] == 2
    targets = {t["figure"]: t for t in server["targets"]}
    assert targets["p99 at 8 in flight, vs the no-op's p99"]["value"] > 0
    # No run at 64 in flight here, so those targets are reported as not measured.
    assert all(t["met"] is None for f, t in targets.items() if "64 in flight" in f)


def test_v2_request_encodes_the_tensor_as_mlserver_reads_it() -> None:
    """The hand-written V2 request against the V2 proto, compiled here from its field list."""
    x = wire.sample_rows(3, 5, seed=1)
    data = wire.v2_request(x, "m")
    fields = dict(_fields(data))
    assert fields[1] == b"m"
    assert np.frombuffer(fields[7], dtype="<f4").reshape(3, 5).tolist() == x.tolist()
    tensor = dict(_fields(fields[5]))
    assert tensor[1] == b"x" and tensor[2] == b"FP32"
    assert tensor[3] == bytes([3, 5])  # packed int64 shape


def test_stream_error_finds_the_error_field_and_skips_results() -> None:
    from service.rpc.api import aeguard_pb2 as pb

    ok = pb.ScoreResponse(model="m", results=[pb.SampleResult(score=1.0)] * 3).SerializeToString()
    assert wire.stream_error(ok) is None
    bad = pb.ScoreResponse(model="m", error=pb.Error(code=3, message="no such model")).SerializeToString()
    assert wire.stream_error(bad) == "3: no such model"


def _fields(data: bytes) -> list[tuple[int, bytes]]:
    """Top-level length-delimited fields of a protobuf message (all the V2 request uses)."""
    out, pos = [], 0
    while pos < len(data):
        key, pos = wire._read_varint(data, pos)
        assert key & 7 == 2
        length, pos = wire._read_varint(data, pos)
        out.append((key >> 3, data[pos : pos + length]))
        pos += length
    return out
