"""Hot reload on a real two-process server: 32 calls in flight through 20 reloads, good and bad alternating.

Every response's (model_version, score) must match what that version gives for the sample, no call
may fail, each worker counts its reloads, and a refused file leaves the served model in place.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from serve_support import Served, start_serve, value

from service.model_store import ModelStore
from service.rpc.api import aeguard_pb2 as pb
from service.rpc.api import aeguard_pb2_grpc as pb_grpc
from service.scorer import Scorer

IN_FLIGHT = 32
RELOADS = 20
SAMPLES = 16


def _train(tiny_dataset, out: Path, *, version: str, seed: int, columns=None, coding_size=2, **extra) -> Path:
    from training.api import TrainOptions, train_model
    from training.fitting.fit import FitConfig

    cols = columns or list(range(8))
    options = TrainOptions(
        name="tiny",
        version=version,
        thresholds=("warning=q0.95", "critical=q0.999"),
        fit=FitConfig(hidden=[16], coding_size=coding_size, max_epochs=20, patience=5, seed=seed),
        **extra,
    )
    x = tiny_dataset.X[:, cols]
    names = [tiny_dataset.feature_names[c] for c in cols]
    train_model(x, names, out, labels=tiny_dataset.y, options=options)
    return out


@pytest.fixture(scope="module")
def versions(tiny_model_path, tiny_dataset, tmp_path_factory) -> dict[str, Path]:
    """Good files (versions 1 and 2 of model 'tiny') and bad ones that must never be served."""
    d = tmp_path_factory.mktemp("versions")
    v2 = _train(tiny_dataset, d / "v2.onnx", version="2", seed=1)
    half = d / "half.onnx"
    half.write_bytes(v2.read_bytes()[: v2.stat().st_size // 2])
    corrupt = d / "corrupt.onnx"
    corrupt.write_bytes(b"this is not an ONNX model\n" * 100)
    return {
        "1": tiny_model_path,
        "2": v2,
        "half-written": half,
        "corrupt": corrupt,
        "wrong width": _train(
            tiny_dataset, d / "narrow.onnx", version="narrow", seed=2, columns=list(range(6))
        ),
        "overcomplete": _train(
            tiny_dataset, d / "over.onnx", version="over", seed=3, coding_size=8, allow_overcomplete=True
        ),
    }


def publish(source: Path, target: Path) -> None:
    """The safe way: write beside the served file, then rename over it (atomic)."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


@dataclass
class Load:
    """32 calls in flight on 8 channels, recording what each response says."""

    target: str
    x: np.ndarray
    stop: threading.Event = field(default_factory=threading.Event)
    responses: list[tuple[float, str, int, np.ndarray]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        channels = [
            grpc.aio.insecure_channel(self.target, options=[("grpc.enable_http_proxy", 0)]) for _ in range(8)
        ]
        stubs = [pb_grpc.AnomalyDetectorStub(ch) for ch in channels]
        requests = [
            pb.ScoreRequest(
                samples=pb.Matrix(rows=1, cols=8, raw=self.x[i : i + 1].astype(np.float32).tobytes())
            )
            for i in range(len(self.x))
        ]

        async def caller(k: int) -> None:
            i = k % len(requests)
            while not self.stop.is_set():
                try:
                    resp = await stubs[k % 8].Score(requests[i], timeout=30)
                except grpc.aio.AioRpcError as exc:
                    self.failures.append(f"{exc.code().name}: {exc.details()}")
                else:
                    self.responses.append((time.monotonic(), resp.model_version, i, resp.results[0].score))
                i = (i + 1) % len(requests)

        await asyncio.gather(*(caller(k) for k in range(IN_FLIGHT)))
        for ch in channels:
            await ch.close()


def reloads(served: Served) -> tuple[float, float]:
    m = served.scrape()
    return value(m, "aeguard_model_reloads_total", result="ok"), value(
        m, "aeguard_model_reloads_total", result="failed"
    )


def wait_for(predicate, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_twenty_reloads_under_load_fail_no_call_and_every_score_matches_its_version(
    versions, tiny_dataset, tmp_path
):
    models = tmp_path / "models"
    models.mkdir()
    served_file = models / "tiny.onnx"
    shutil.copyfile(versions["1"], served_file)
    x = tiny_dataset.X[:SAMPLES]
    expected = {v: Scorer.load(versions[v]).score(x).score for v in ("1", "2")}
    assert not np.allclose(expected["1"], expected["2"])  # the versions are told apart by their scores
    server = start_serve("--model", str(models), "--processes", "2", "--reload-interval-s", "0.2")
    load = Load(server.target, x)
    thread = threading.Thread(target=load.run, daemon=True)
    try:
        thread.start()
        wait_for(lambda: len(load.responses) > 100, "traffic")
        bad_kinds = ["half-written", "corrupt", "wrong width", "overcomplete"]
        latencies = []
        version = "1"
        for step in range(RELOADS):
            ok, failed = reloads(server)
            if step % 2 == 0:  # a good new version
                version = "2" if version == "1" else "1"
                published = time.monotonic()
                publish(versions[version], served_file)
                wait_for(
                    lambda ok=ok: reloads(server)[0] >= ok + 2, f"both workers to load version {version}"
                )
                wait_for(
                    lambda published=published, version=version: any(
                        t > published and v == version for t, v, _, _ in load.responses[-200:]
                    ),
                    f"a response from version {version}",
                )
                first = min(t for t, v, _, _ in load.responses if t > published and v == version)
                latencies.append(first - published)
            else:
                kind = bad_kinds[(step // 2) % len(bad_kinds)]
                if kind == "half-written":  # written in place, and never finished
                    shutil.copyfile(versions[kind], served_file)
                else:
                    publish(versions[kind], served_file)
                wait_for(
                    lambda failed=failed: reloads(server)[1] >= failed + 2, f"both workers to refuse {kind}"
                )
        time.sleep(0.5)
    finally:
        load.stop.set()
        thread.join(timeout=60)
        code = server.stop()
    assert code == 0
    assert load.failures == []
    assert len(load.responses) > 1000
    seen = {v for _, v, _, _ in load.responses}
    assert seen == {"1", "2"}
    for _, v, i, score in load.responses:
        assert score == pytest.approx(float(expected[v][i]), rel=1e-6), f"version {v} sample {i}"
    ok, failed = reloads_from_logs(server)
    assert (ok, failed) == (2 * RELOADS // 2, 2 * RELOADS // 2)
    print(
        f"reload latency, file renamed -> first response from the new version (interval 0.2 s): "
        f"median {np.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms "
        f"over {len(latencies)}; "
        f"{len(load.responses)} calls, 0 failed"
    )


def reloads_from_logs(server: Served) -> tuple[int, int]:
    logs = server.logs()
    ok = sum(1 for e in logs if e["message"] == "model reloaded")
    failed = sum(1 for e in logs if e["message"] == "model file refused; the served model stays")
    return ok, failed


def test_sighup_reloads_at_once_and_refusals_name_the_reason(versions, tiny_dataset, tmp_path):
    served_file = tmp_path / "tiny.onnx"
    shutil.copyfile(versions["1"], served_file)
    server = start_serve("--model", str(served_file), "--processes", "1", "--reload-interval-s", "0")
    try:
        publish(versions["wrong width"], served_file)
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads(server)[1] == 1, "the wrong-width file to be refused")
        publish(versions["overcomplete"], served_file)
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads(server)[1] == 2, "the overcomplete file to be refused")
        publish(versions["2"], served_file)
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads(server)[0] == 1, "version 2")
        with grpc.insecure_channel(server.target, options=[("grpc.enable_http_proxy", 0)]) as ch:
            info = pb_grpc.AnomalyDetectorStub(ch).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert info.version == "2"
    finally:
        assert server.stop() == 0
    errors = [
        e["error"] for e in server.logs() if e["message"] == "model file refused; the served model stays"
    ]
    assert "would change its input from 8 to 6 features" in errors[0]
    assert "overcomplete" in errors[1]


def test_store_update_keeps_in_flight_models_and_refuses_to_empty_itself(tiny_model_path):
    store = ModelStore()
    store.load_path(tiny_model_path)
    before = store.get("tiny")
    again = store.load_file(tiny_model_path)
    store.update([again], [])
    assert store.get("tiny") is again and before is not again  # the caller holding `before` keeps it
    with pytest.raises(Exception, match="refusing to remove the last served model"):
        store.update([], ["tiny"])
    assert store.get("tiny") is again
