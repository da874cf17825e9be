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

from bench import wire

SERVERS = ("ae_default", "ae_1", "noop_sync", "noop_aio")


def test_bench_server_part_runs_end_to_end(tiny_model_path: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "bench"
    argv = [
        sys.executable, "-m", "bench", "--only", "server", "--model", str(tiny_model_path),
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
    rows = {(r["method"], r["rows"], r["in_flight"], r["columnar"]): r for r in server["rows"]}
    assert list(rows) == [
        ("Score", 1, 8, False),
        ("Score", 64, 2, False),
        ("ScoreStream", 64, 2, False),
        ("ScoreStream", 64, 2, True),
    ]
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
    batch1 = rows[("Score", 1, 8, False)]
    assert "ae_mb" in batch1 and "ae_mb" not in rows[("Score", 64, 2, False)]
    assert batch1["ae_mb_vs_ae_default"] > 0
    # The 8 calls in flight were split over both client processes.
    assert batch1["ae_default"]["client_processes"] == 2
    assert rows[("ScoreStream", 64, 2, True)]["in_process_cpu_vs_ae_default"] > 0
    targets = {t["figure"]: t for t in server["targets"]}
    assert targets["p99 at 8 in flight, vs the no-op's p99"]["value"] > 0
    # No run at 64 in flight or at batch 4096 here, so those targets are reported as not measured.
    assert all(t["met"] is None for f, t in targets.items() if "64 in flight" in f or "4096" in f)


def test_targets_read_their_rows_and_pair_the_rounds() -> None:
    """The Targets table from hand-made rows: paired ratios against the faster (rates) or cheaper
    (CPU) no-op of each round, and the columnar row against in-process."""
    from bench import targets

    def side(rounds: list[float], cpu: list[float]) -> dict[str, list[float]]:
        return {"rounds": rounds, "cpu_us_per_request_rounds": cpu, "p99_ms_rounds": [1.0] * len(rounds)}

    batch1 = {
        "workload": "Score batch=1 in-flight=64", "rate_key": "requests_per_s",
        "ae_default": side([800, 900, 3000], [500, 450, 400]),
        "noop_sync": side([1000, 500, 1000], [300, 300, 500]),
        "noop_aio": side([500, 1000, 2000], [250, 400, 200]),
        "mlserver_best": side([300, 600, 1000], [900, 900, 900]),
        "mlserver_default": side([400, 300, 500], [900, 900, 900]),
    }  # fmt: skip
    columnar = {
        "workload": "ScoreStream batch=4096 in-flight=4 columnar", "rate_key": "samples_per_s",
        "ae_default": side([3.4e6, 3.0e6, 2.0e6], [1000, 1000, 1000]),
        "in_process": side([4e6, 4e6, 4e6], [800, 900, 1000]),
    }  # fmt: skip
    for row in (batch1, columnar):
        targets.add_ratios(row)
    assert batch1["ae_default_vs_noop"] == pytest.approx(0.9)  # median of 0.8, 0.9, 1.5
    assert batch1["ae_default_cpu_vs_noop"] == pytest.approx(2.0)  # of 500/250, 450/300, 400/200
    # Against the better MLServer configuration of each round: 800/400, 900/600, 3000/1000.
    assert batch1["ae_default_vs_mlserver_best"] == pytest.approx(2.0)
    assert columnar["in_process_cpu_vs_ae_default"] == pytest.approx(0.9)
    verdicts = {v["figure"]: v for v in targets.serving_targets([batch1, columnar])}
    bulk = verdicts["ScoreStream batch 4096 (columnar), vs in-process onnxruntime samples/s"]
    assert bulk["value"] == pytest.approx(0.75) and bulk["met"] is False
    assert verdicts["batch 1, 64 in flight, vs MLServer's best configuration"]["met"] is True  # >= 2
    assert verdicts["p99 at 8 in flight, vs the no-op's p99"]["met"] is None  # no such row
    assert "NOT MET" in targets.format_targets(list(verdicts.values()))


def test_server_cpu_sums_the_whole_process_tree() -> None:
    # `aeguard serve --processes N` scores in workers under a supervisor: their CPU is the server's.
    from bench import procs

    worker = "import sys\nfor _ in range(10**7): pass\nprint('burnt', flush=True)\nsys.stdin.read()"
    supervisor = (
        "import subprocess, sys\n"
        f"w = subprocess.Popen([sys.executable, '-c', {worker!r}], stdin=sys.stdin, stdout=sys.stdout)\n"
        "print(w.pid, flush=True)\nw.wait()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", supervisor], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        worker_pid = int(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "burnt"
        assert procs.tree_pids(proc.pid) == [proc.pid, worker_pid]
        sample = procs.tree_cpu_s(proc.pid)
        assert sample[worker_pid] > 0 and sample[worker_pid] == pytest.approx(procs.process_cpu_s(worker_pid))
        assert procs.cpu_between({}, sample) == pytest.approx(sum(sample.values()))
        assert procs.rss_mb(worker_pid) > 0 and procs.open_fds(worker_pid) >= 3
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert procs.process_cpu_s(worker_pid) == 0.0 and procs.rss_mb(worker_pid) is None  # gone


def test_response_bench_times_both_forms(tiny_model_path: Path) -> None:
    from bench.responses import format_table, measure

    rows = measure(tiny_model_path, [1, 5], repeat=1, samples_per_loop=50)
    assert [r["rows"] for r in rows] == [1, 5]
    for r in rows:
        assert all(r[k] > 0 for k in r if k.endswith("_us"))
        # 13 bytes a sample in columns (2 float32, 1 byte, 1 uint32) plus the fixed part.
        assert r["columnar_bytes"] > 13 * r["rows"]
    assert "columnar srv" in format_table(rows)


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
