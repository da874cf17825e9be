"""`aeguard score --pushgateway`: job metrics pushed to the real Prometheus Pushgateway (Debian's package).

The test starts ``prometheus-pushgateway`` on 127.0.0.1 with a free port and no persistence
file, reads the pushed series back from its ``/metrics``, and stops it by PID.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest
from batch_support import score, summary_json, tiny_table, write_parquet
from prometheus_client.parser import text_string_to_metric_families

BINARY = shutil.which("prometheus-pushgateway")
pytestmark = pytest.mark.skipif(
    BINARY is None,
    reason="prometheus-pushgateway is not installed (apt-get install prometheus-pushgateway; .ci/run does)",
)

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory) -> Iterator[str]:
    port = _free_port()
    log = (tmp_path_factory.mktemp("pushgateway") / "pushgateway.log").open("w")
    proc = subprocess.Popen(
        [BINARY, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _OPENER.open(f"{url}/-/ready", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, "the Pushgateway exited at start-up"
            assert time.monotonic() < deadline, "the Pushgateway did not become ready within 30 s"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def pushed(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The Pushgateway's series of job ``aeguard_batch``, keyed by name and labels (job/instance left out)."""
    text = _OPENER.open(f"{url}/metrics", timeout=10).read().decode()
    series = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("job") == "aeguard_batch" and s.name.startswith("aeguard_batch_"):
                labels = tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("job", "instance")))
                series[(s.name, labels)] = s.value
    return series


def test_job_metrics_are_pushed_and_a_failed_run_keeps_the_last_success(
    pushgateway, tiny_dataset, tiny_model_path, tmp_path, capsys
):
    source = write_parquet(tiny_table(tiny_dataset), tmp_path / "in.parquet")
    before = time.time()
    args = ["--model", tiny_model_path, "--input", source, "--output", tmp_path / "o.parquet", "--json"]
    assert score(*args, "--pushgateway", pushgateway) == 0
    after = time.time()
    doc = summary_json(capsys.readouterr().out)

    metrics = pushed(pushgateway)
    assert metrics[("aeguard_batch_rows_total", ())] == doc["rows"] == len(tiny_dataset.X)
    for severity in ("warning", "critical"):
        key = ("aeguard_batch_anomalies_total", (("severity", severity),))
        assert metrics[key] == doc["anomalies"][severity]
    assert sum(doc["anomalies"].values()) > 0
    duration = metrics[("aeguard_batch_duration_seconds", ())]
    # One figure: the summary's total (model load included) is what the gateway gets.
    assert doc["wall_s"] <= duration < after - before
    assert duration == pytest.approx(doc["total_s"], abs=0.001)
    last_success = metrics[("aeguard_batch_last_success_timestamp_seconds", ())]
    assert before <= last_success <= after

    # A failing run (a missing value) pushes its duration only: the last success stays as it was.
    broken = tiny_table(tiny_dataset).to_pylist()
    broken[3]["f4"] = None
    import pyarrow as pa

    bad_source = write_parquet(pa.Table.from_pylist(broken), tmp_path / "bad.parquet")
    assert (
        score(
            "--model",
            tiny_model_path,
            "--input",
            bad_source,
            "--output",
            tmp_path / "o2.parquet",
            "--pushgateway",
            pushgateway,
        )
        == 2
    )
    after_failure = pushed(pushgateway)
    assert after_failure[("aeguard_batch_last_success_timestamp_seconds", ())] == last_success
    assert after_failure[("aeguard_batch_rows_total", ())] == doc["rows"]
    assert after_failure[("aeguard_batch_duration_seconds", ())] != duration


def test_unreachable_pushgateway_is_a_warning_not_a_lost_result(
    tiny_dataset, tiny_model_path, tmp_path, caplog
):
    source = write_parquet(tiny_table(tiny_dataset), tmp_path / "in.parquet")
    out = tmp_path / "o.parquet"
    dead = f"http://127.0.0.1:{_free_port()}"
    assert score("--model", tiny_model_path, "--input", source, "--output", out, "--pushgateway", dead) == 0
    assert out.exists()
    assert f"cannot push metrics to the Pushgateway at {dead}" in caplog.text
