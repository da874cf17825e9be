"""`make bench` end to end, shrunk: every workload measured on aeguard, the no-op server and in-process.

Figures are not asserted (no timed assertions); the run must complete, measure every cell without
errors, and write a JSON record whose ratios follow from its rates.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def test_bench_server_part_runs_end_to_end(tiny_model_path: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "bench"
    argv = [
        sys.executable, "-m", "service.bench", "--only", "server", "--model", str(tiny_model_path),
        "--duration-s", "0.25", "--warmup-s", "0.2", "--concurrency", "1,3", "--batch-rows", "64",
        "--batch-in-flight", "2", "--client-processes", "2", "--repeat", "2", "--out-dir", str(out_dir),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ae/no-op" in proc.stdout  # the table was printed
    assert "target: no unary batch-1 run at concurrency 64" in proc.stdout

    doc = json.loads((out_dir / "latest.json").read_text())
    server = doc["server"]
    assert server["model"]["name"] == "tiny"
    workloads = [(r["method"], r["rows"], r["in_flight"]) for r in server["rows"]]
    assert workloads == [
        ("Score", 1, 1),
        ("Score", 1, 3),
        ("Score", 64, 2),
        ("ScoreStream", 64, 2),
    ]
    for row in server["rows"]:
        key = row["rate_key"]
        for side in ("aeguard", "noop", "in_process"):
            assert row[side][key] > 0, (row["workload"], side)
            assert len(row[side]["rounds"]) == 2 and row[side][key] in row[side]["rounds"]
        for side in ("aeguard", "noop"):
            assert row[side]["errors"] == 0, row[side].get("first_error")
            assert row[side]["p50_ms"] <= row[side]["p99_ms"]
        paired = [a / n for a, n in zip(row["aeguard"]["rounds"], row["noop"]["rounds"], strict=True)]
        assert row["ratio_vs_noop"] == pytest.approx(sum(paired) / 2)  # median of 2 paired rounds
        assert row["ratio_vs_in_process"] == pytest.approx(row["aeguard"][key] / row["in_process"][key])
    # The 3 calls in flight were split over both client processes.
    assert server["rows"][1]["aeguard"]["client_processes"] == 2
    # No run at concurrency 64 here, so the target is reported as not measured.
    assert server["target"]["met"] is None
