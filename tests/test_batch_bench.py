"""The batch job's `make bench` figures, shrunk: the measurement runs end to end on the tiny model.

Figures are not asserted (no timed assertions); the record must be complete and consistent.
"""

from __future__ import annotations

from service.bench.batch import run_batch_bench


def test_batch_bench_runs_end_to_end(tiny_model_path, capsys):
    result = run_batch_bench(small_rows=1_000, large_rows=20_000, chunk_rows=4_096, model=tiny_model_path)
    out = capsys.readouterr().out
    assert "in-process onnxruntime on the same 20,000 rows" in out and "peak RSS" in out
    assert result["n_features"] == 8
    assert [job["rows"] for job in result["jobs"].values()] == [1_000, 20_000]
    for job in result["jobs"].values():
        assert job["rows_per_s"] > 0 and job["peak_rss_mb"] > 0 and job["process_wall_s"] >= job["job_wall_s"]
    assert result["onnxruntime_rows_per_s"] > 0
    expected = result["jobs"]["large"]["rows_per_s"] / result["onnxruntime_rows_per_s"]
    assert abs(result["ratio_to_onnxruntime"] - expected) < 1e-3
    assert result["ratio_met"] == (expected >= result["target_ratio"])
    assert result["peak_rss_met"] == (result["jobs"]["large"]["peak_rss_mb"] < result["target_peak_rss_mb"])
