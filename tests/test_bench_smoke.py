"""`make bench` end to end, shrunk: every workload measured on aeguard, the no-op server and in-process.

Figures are not asserted (no timed assertions); the run must complete, measure every cell without
errors, and write a JSON record whose ratios follow from its rates.
"""

from __future__ import annotations

import json
import os
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
    assert "target: no columnar ScoreStream run at batch 4096" in proc.stdout

    doc = json.loads((out_dir / "latest.json").read_text())
    server = doc["server"]
    assert server["model"]["name"] == "tiny"
    workloads = [(r["method"], r["rows"], r["in_flight"], r["columnar"]) for r in server["rows"]]
    assert workloads == [
        ("Score", 1, 1, False),
        ("Score", 1, 3, False),
        ("Score", 64, 2, False),
        ("ScoreStream", 64, 2, False),
        ("ScoreStream", 64, 2, True),
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
    assert server["columnar_target"]["met"] is None


def test_columnar_target_reads_the_batch_4096_columnar_row() -> None:
    from service.bench.serving import _columnar_target

    def side(samples_per_s: float, cores: float) -> dict[str, float]:
        return {"samples_per_s": samples_per_s, "server_cpu_cores": cores}

    rows = [
        {"columnar": False, "rows": 4096, "ratio_vs_in_process": 0.5},
        {
            "columnar": True,
            "rows": 4096,
            "ratio_vs_in_process": 0.85,
            "aeguard": side(2_000_000, 1.0),  # 500 ns of server CPU per sample
            "in_process": side(4_000_000, 1.6),  # 400 ns per sample
        },
    ]
    verdict = _columnar_target(rows)
    assert verdict["met"] is True and verdict["ratio"] == 0.85
    assert verdict["cpu_ns_per_sample"] == pytest.approx({"aeguard": 500.0, "in_process": 400.0})
    assert verdict["cpu_ratio"] == pytest.approx(0.8)
    assert (
        "= 0.85 (target >= 0.8): MET" in verdict["line"] and "in-process / aeguard = 0.80" in verdict["line"]
    )


def test_server_cpu_includes_worker_processes() -> None:
    # `aeguard serve --processes N` scores in workers under a supervisor: their CPU is the server's.
    from service.bench.loadgen import _stat, process_cpu_s

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
        ticks = os.sysconf("SC_CLK_TCK")
        own = {pid: (int(_stat(pid)[11]) + int(_stat(pid)[12])) / ticks for pid in (proc.pid, worker_pid)}
        assert own[worker_pid] > 0
        assert process_cpu_s(proc.pid) >= own[proc.pid] + own[worker_pid]
        assert process_cpu_s(worker_pid) < process_cpu_s(proc.pid)
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


def test_response_bench_times_both_forms(tiny_model_path: Path) -> None:
    from service.bench.responses import format_table, measure

    rows = measure(tiny_model_path, [1, 5], repeat=1, samples_per_loop=50)
    assert [r["rows"] for r in rows] == [1, 5]
    for r in rows:
        assert all(r[k] > 0 for k in r if k.endswith("_us"))
        # 13 bytes a sample in columns (2 float32, 1 byte, 1 uint32) plus the fixed part.
        assert r["columnar_bytes"] > 13 * r["rows"]
    assert "columnar srv" in format_table(rows)
