"""`make soak`'s code path for a few seconds: mixed load on a 2-process server, every process sampled.

Figures are not asserted (no timed assertions): the run must finish without errors, sample the
supervisor and both workers, and exit non-zero when calls fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent

pytestmark = pytest.mark.slow  # two multi-process servers and client processes: about 20 s


def _soak(model: Path, out_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable, "-m", "bench.soak", "--model", str(model), "--duration-s", "2",
        "--sample-s", "1", "--warmup-s", "0.5", "--in-flight", "8", "--client-processes", "2",
        "--channels", "2", "--server-arg=--processes=2", "--out-dir", str(out_dir), *extra,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=REPO)


def test_soak_samples_every_server_process_and_counts_no_errors(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    proc = _soak(tiny_model_path, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "errors: 0; server processes that ended: 0" in proc.stdout
    (record,) = tmp_path.glob("soak-*.json")
    doc = json.loads(record.read_text())
    assert doc["processes"] == 2 and doc["errors"] == 0 and doc["server_alive_at_end"]
    roles = sorted(p["role"] for p in doc["processes_sampled"])
    assert roles.count("worker") == 2 and roles.count("supervisor") == 1
    for p in doc["processes_sampled"]:
        assert p["samples"] == 3  # at 0, 1 and 2 s
        assert p["rss_mb"]["first"] > 0 and p["fds"]["max"] >= p["fds"]["first"] > 0
    assert set(doc["calls"]) == {
        "Score batch 1",
        "Score batch 256",
        "ScoreStream batch 1",
        "ScoreStream batch 256",
    }
    assert all(k["requests"] > 0 for k in doc["calls"].values())
    burst = doc["burst"]  # then a burst of the largest batches; memory back within 20 % (exit 0)
    assert burst["calls"] == 24 and not burst["errors"] and burst["returned"]
    assert "burst: 24 Score calls" in proc.stdout


def test_soak_exits_non_zero_when_calls_fail(tiny_model_path: Path, tmp_path: Path) -> None:
    # Batches of 256 rows are refused (RESOURCE_EXHAUSTED) by a server capped at 100 rows.
    proc = _soak(tiny_model_path, tmp_path, "--server-arg=--max-batch-rows=100")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (record,) = tmp_path.glob("soak-*.json")
    calls = json.loads(record.read_text())["calls"]
    assert calls["Score batch 256"]["errors"] > 0
    assert calls["Score batch 256"]["first_error"].startswith("RESOURCE_EXHAUSTED")
    assert calls["Score batch 1"]["errors"] == 0
