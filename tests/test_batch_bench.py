"""The batch job's `make bench` figures, shrunk: the measurement runs end to end on the tiny model.

Figures are not asserted (no timed assertions); the record must be complete and consistent.
"""

from __future__ import annotations

import pytest

from bench.batch import run_batch_bench


@pytest.mark.slow
def test_batch_bench_runs_end_to_end(tiny_model_path, capsys):
    result = run_batch_bench(
        small_rows=1_000, large_rows=20_000, chunk_rows=4_096, model=tiny_model_path, rounds=2
    )
    out = capsys.readouterr().out
    assert "in-process onnxruntime on the same 20,000 rows" in out and "peak RSS" in out
    assert result["n_features"] == 8
    assert result["small_job"]["rows"] == 1_000
    assert [job["rows"] for job in result["large_jobs"]] == [20_000, 20_000]
    for job in [result["small_job"], *result["large_jobs"]]:
        assert job["rows_per_s"] > 0 and job["peak_rss_mb"] > 0 and job["process_wall_s"] >= job["job_wall_s"]
    assert len(result["onnxruntime_rows_per_s"]) == 2 and min(result["onnxruntime_rows_per_s"]) > 0
    expected = [
        job["rows_per_s"] / rate
        for job, rate in zip(result["large_jobs"], result["onnxruntime_rows_per_s"], strict=True)
    ]
    assert result["ratios"] == pytest.approx(expected, abs=1e-3)
    assert result["ratio_to_onnxruntime"] == pytest.approx(sum(expected) / 2, abs=1e-3)  # median of two
    assert result["ratio_met"] == (result["ratio_to_onnxruntime"] >= result["target_ratio"])
    assert result["peak_rss_mb_large"] == max(job["peak_rss_mb"] for job in result["large_jobs"])
    assert result["peak_rss_met"] == (result["peak_rss_mb_large"] < result["target_peak_rss_mb"])
