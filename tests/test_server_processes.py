"""A real multi-process server (`aeguard serve --processes 2`) on 127.0.0.1: sums, starvation, exits.

Deadlines in these tests only detect hangs; measured latencies are printed, never asserted.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serve_support import Served, raw_request, series, start_serve, value

from service.rpc.api import aeguard_pb2 as pb
from service.rpc.api import aeguard_pb2_grpc as pb_grpc

NO_PROXY = [("grpc.enable_http_proxy", 0)]


def wait_until(predicate, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def served(tiny_model_path) -> Iterator[Served]:
    server = start_serve("--model", str(tiny_model_path), "--processes", "2", "--grace-s", "5")
    yield server
    assert server.stop() == 0


def worker_pids(metrics: dict) -> set[str]:
    return {labels["pid"] for labels in series(metrics, "aeguard_model_info")}


def test_every_worker_serves_and_counts_add_up_exactly(served, tiny_dataset):
    before = served.scrape()
    assert len(worker_pids(before)) == 2  # aeguard_model_info: one series per worker
    calls = 0
    for _ in range(8):  # SO_REUSEPORT balances connections: fresh channels reach both workers
        with grpc.insecure_channel(served.target, options=NO_PROXY) as ch:
            stub = pb_grpc.AnomalyDetectorStub(ch)
            for i in range(5):
                assert len(stub.Score(raw_request(tiny_dataset.X[i : i + 3]), timeout=30).results) == 3
                calls += 1
    after = served.scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("aeguard_rpc_requests_total", method="Score", code="OK") == calls == 40
    assert delta("aeguard_samples_scored_total", model_name="tiny", model_version="1") == 3 * calls
    assert delta("aeguard_normalized_score_count", model_name="tiny", model_version="1") == 3 * calls
    assert value(after, "aeguard_worker_processes") == 2
    assert value(after, "aeguard_rpc_in_flight", method="Score") == 0


def test_idle_streams_and_watches_from_other_clients_starve_nobody(served, tiny_dataset):
    channels = [grpc.insecure_channel(served.target, options=NO_PROXY) for _ in range(8)]
    release = threading.Event()
    calls: list = []

    def held():
        release.wait(60)
        return
        yield

    try:
        for i in range(512):
            calls.append(pb_grpc.AnomalyDetectorStub(channels[i % 8]).ScoreStream(held(), timeout=60))
        for i in range(64):
            calls.append(
                health_pb2_grpc.HealthStub(channels[i % 8]).Watch(
                    health_pb2.HealthCheckRequest(service=""), timeout=60
                )
            )

        def all_open() -> bool:
            now = served.scrape()
            return (
                value(now, "aeguard_rpc_in_flight", method="ScoreStream") >= 512
                and value(now, "aeguard_rpc_in_flight", method="Watch") >= 64
            )

        wait_until(
            all_open,
            what="512 open streams and 64 watches",
        )
        latencies = []
        for _ in range(4):  # fresh connections: whichever worker they land on must answer
            with grpc.insecure_channel(served.target, options=NO_PROXY) as ch:
                start = time.perf_counter()
                check = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
                resp = pb_grpc.AnomalyDetectorStub(ch).Score(raw_request(tiny_dataset.X[:1]), timeout=5)
                latencies.append((time.perf_counter() - start) * 1000)
                assert check.status == health_pb2.HealthCheckResponse.SERVING
                assert len(resp.results) == 1
        shown = [round(x, 1) for x in latencies]
        print(f"connect + Check + Score with 512 idle streams, 64 watches: {shown} ms")
    finally:
        release.set()
        for call in calls:
            call.cancel()
        for ch in channels:
            ch.close()


def test_undecodable_requests_get_invalid_argument_and_are_counted(served):
    before = served.scrape()
    with grpc.insecure_channel(served.target, options=NO_PROXY) as ch:
        score = ch.unary_unary("/aeguard.v1.AnomalyDetector/Score")  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as err:
            score(b"\xff\xff\xff", timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("request is not a valid aeguard.v1.ScoreRequest: ")
        stream = ch.stream_stream(
            "/aeguard.v1.AnomalyDetector/ScoreStream", response_deserializer=pb.ScoreResponse.FromString
        )
        good = raw_request(np.zeros((1, 8)), request_id="good").SerializeToString()
        responses = list(stream(iter([b"\xff\xff\xff", good]), timeout=30))
    assert responses[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "not a valid aeguard.v1.ScoreRequest" in responses[0].error.message
    assert responses[1].request_id == "good" and len(responses[1].results) == 1  # the stream goes on
    after = served.scrape()
    moved = value(after, "aeguard_rpc_requests_total", method="Score", code="INVALID_ARGUMENT") - value(
        before, "aeguard_rpc_requests_total", method="Score", code="INVALID_ARGUMENT"
    )
    assert moved == 1
    assert not [e for e in served.logs() if "traceback" in e or "Exception deserializing" in e["message"]]


def test_a_deadline_exceeded_call_is_counted(served):
    def code_count() -> float:
        return value(
            served.scrape(), "aeguard_rpc_requests_total", method="ScoreStream", code="DEADLINE_EXCEEDED"
        )

    before = code_count()
    release = threading.Event()

    def silent():
        release.wait(30)
        return
        yield

    with grpc.insecure_channel(served.target, options=NO_PROXY) as ch:
        with pytest.raises(grpc.RpcError) as err:
            list(pb_grpc.AnomalyDetectorStub(ch).ScoreStream(silent(), timeout=0.5))
        release.set()
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: code_count() == before + 1, what="DEADLINE_EXCEEDED counted")


def test_unknown_model_names_are_truncated_in_errors(served):
    request = raw_request(np.zeros((1, 8)), model="x" * 5000)
    with grpc.insecure_channel(served.target, options=NO_PROXY) as ch, pytest.raises(grpc.RpcError) as err:
        pb_grpc.AnomalyDetectorStub(ch).Score(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(err.value.details()) < 400 and "x" * 101 not in err.value.details()


def test_a_killed_worker_is_replaced_and_the_service_keeps_answering(tiny_model_path, tiny_dataset):
    server = start_serve("--model", str(tiny_model_path), "--processes", "2", "--grace-s", "2")
    try:
        pids = worker_pids(server.scrape())
        victim = int(sorted(pids)[0])
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: (
                value(server.scrape(), "aeguard_worker_restarts_total", reason="signal") == 1
                and len(worker_pids(server.scrape()) - {str(victim)}) == 2
            ),
            what="a replacement worker",
        )
        for i in range(10):
            with grpc.insecure_channel(server.target, options=NO_PROXY) as ch:
                resp = pb_grpc.AnomalyDetectorStub(ch).Score(
                    raw_request(tiny_dataset.X[i : i + 1]), timeout=30
                )
                assert len(resp.results) == 1
        assert value(server.scrape(), "aeguard_worker_processes") == 2
        died = [e for e in server.logs() if e["message"] == "worker died; replacing it"]
        assert died and died[0]["pid"] == victim and died[0]["reason"] == "signal 9"
    finally:
        assert server.stop() == 0


def test_sighup_is_survived_and_sigterm_after_undecodable_streams_exits_in_time(tiny_model_path):
    grace_s = 2.0
    server = start_serve("--model", str(tiny_model_path), "--processes", "2", "--grace-s", str(grace_s))
    channels = [grpc.insecure_channel(server.target, options=NO_PROXY) for _ in range(4)]
    release = threading.Event()
    calls = []
    try:
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert server.proc.poll() is None
        with grpc.insecure_channel(server.target, options=NO_PROXY) as ch:
            check = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert check.status == health_pb2.HealthCheckResponse.SERVING

        def garbage_then_hold():
            yield b"\xff\xff\xff"
            release.wait(60)

        for ch in channels:
            calls.append(
                ch.stream_stream("/aeguard.v1.AnomalyDetector/ScoreStream")(garbage_then_hold(), timeout=60)
            )
        for call in calls:  # each got its error response; the stream stays open
            assert next(call)
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=grace_s + 30)
        took = time.monotonic() - start
        print(f"exit {code} {took:.2f} s after SIGTERM with 4 open streams (grace {grace_s} s)")
        assert code == 0
        assert took < grace_s + 15  # "gone within the grace period plus a few seconds" (hang detector)
    finally:
        release.set()
        for ch in channels:
            ch.close()
        server.stop()
    messages = [e["message"] for e in server.logs()]
    assert any("SIGHUP" in m for m in messages)
    assert "stopped" in messages


def test_drift_is_the_psi_of_every_workers_recent_scores(tiny_model_path, tiny_dataset):
    server = start_serve(
        "--model",
        str(tiny_model_path),
        "--processes",
        "2",
        "--drift-window",
        "400",
        "--drift-min-samples",
        "100",
    )
    labels = {"model_name": "tiny", "model_version": "1"}
    try:
        assert np.isnan(value(server.scrape(), "aeguard_score_drift_psi", **labels))  # no scores yet
        for i in range(8):  # fresh channels: both workers score some of the normal rows
            with grpc.insecure_channel(server.target, options=NO_PROXY) as ch:
                pb_grpc.AnomalyDetectorStub(ch).Score(raw_request(tiny_dataset.normal[i * 50 : i * 50 + 50]))
        wait_until(
            lambda: np.isfinite(value(server.scrape(), "aeguard_score_drift_psi", **labels)), what="drift"
        )
        calm = value(server.scrape(), "aeguard_score_drift_psi", **labels)
        anomalies = np.tile(tiny_dataset.anomalies, (10, 1))[:400]
        for i in range(8):
            with grpc.insecure_channel(server.target, options=NO_PROXY) as ch:
                pb_grpc.AnomalyDetectorStub(ch).Score(raw_request(anomalies[i * 50 : i * 50 + 50]))
        wait_until(lambda: value(server.scrape(), "aeguard_score_drift_psi", **labels) > 1.0, what="drift")
        assert calm < 0.5
    finally:
        assert server.stop() == 0


def test_calls_accepted_before_sigterm_finish_and_none_is_cancelled(tiny_model_path, tiny_dataset):
    server = start_serve("--model", str(tiny_model_path), "--processes", "2", "--grace-s", "5")
    codes: list[str] = []
    lock = threading.Lock()
    x = tiny_dataset.X[:64]

    def caller() -> None:  # keeps calling through SIGTERM until the server is gone
        with grpc.insecure_channel(server.target, options=NO_PROXY) as ch:
            stub = pb_grpc.AnomalyDetectorStub(ch)
            for _ in range(10_000):
                try:
                    stub.Score(raw_request(x), timeout=30)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                with lock:
                    codes.append(code)
                if code != "OK":
                    return

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    for t in threads:
        t.join(timeout=30)
    counts = {c: codes.count(c) for c in set(codes)}
    print(f"calls around SIGTERM: {counts}")
    assert counts.get("OK", 0) > 100
    # Refused once draining (UNAVAILABLE), never cancelled mid-call.
    assert set(counts) <= {"OK", "UNAVAILABLE"}, counts


def test_a_port_another_server_listens_on_is_refused(served, tiny_model_path):
    import subprocess
    import sys

    from serve_support import REPO, clean_env

    result = subprocess.run(
        [
            *(sys.executable, "-m", "service.cli", "serve", "--model", str(tiny_model_path)),
            *("--processes", "2", "--port", str(served.port), "--metrics-port", "0"),
        ],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{served.port}: another process listens there" in result.stderr
