"""The container image, built with podman from deploy/Dockerfile and run as its users run it.

The suite's own model is mounted read-only exactly as the README says (``-v "$PWD/models:/models:ro"``),
with no chmod; the server in it answers health and Score on loopback (``--network host``,
``AEGUARD_HOST=127.0.0.1``, free ports), serves /metrics, runs as a non-root uid without torch, passes
the image's HEALTHCHECK and exits 0 on SIGTERM within its grace; the batch job scores a mounted
directory. Where Docker Hub is out of reach the base is a Debian stand-in for python:3.11-slim-bookworm
(deploy/podman-base-image.sh, kept in podman's store and reused). Skips only where podman cannot run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest
from batch_support import tiny_table, write_parquet
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serve_support import scrape, series, value

from service.client import Client
from service.scorer import Scorer

# Building the base (debootstrap) and the image fetch packages: minutes on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parent.parent
#: crun, podman's default runtime, fails here ("cgroups in hybrid mode not supported"); runc works.
PODMAN = ["podman", "--runtime", "runc"]
#: podman's default rlimits cannot be set in every sandbox; these can.
RUN_FLAGS = ["--network", "host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
BASE_IMAGE = os.environ.get("AEGUARD_TEST_BASE_IMAGE", "localhost/debian-python:bookworm")
IMAGE_UID = 10001
#: The server's default drain time (AEGUARD_GRACE_S): SIGTERM must end it within this.
GRACE_S = 10


def podman(*args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout_s, check=False, cwd=ROOT
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def podman_usable() -> str | None:
    """Why podman cannot run containers here, or None when it can."""
    if shutil.which("podman") is None:
        return "podman is not installed (make system-deps installs podman, runc and debootstrap as root)"
    if shutil.which("runc") is None:
        return "runc is not installed (make system-deps installs it as root)"
    info = subprocess.run([*PODMAN, "info"], capture_output=True, text=True, timeout=120, check=False)
    if info.returncode != 0:
        return f"podman cannot run here: {(info.stderr.strip().splitlines() or ['?'])[-1]}"
    return None


def ensure_base_image() -> None:
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return
    if BASE_IMAGE.startswith("localhost/") and os.geteuid() != 0:
        pytest.skip(
            f"no base image {BASE_IMAGE}, and building it takes root (debootstrap): run "
            "deploy/podman-base-image.sh as root once, "
            "or set AEGUARD_TEST_BASE_IMAGE=python:3.11-slim-bookworm"
        )
    if BASE_IMAGE.startswith("localhost/"):
        script = subprocess.run(
            [str(ROOT / "deploy" / "podman-base-image.sh"), BASE_IMAGE],
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        assert script.returncode == 0, script.stderr[-4000:]
    else:
        podman("pull", BASE_IMAGE, timeout_s=600)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The image built from deploy/Dockerfile, in Docker's format (OCI drops the HEALTHCHECK)."""
    reason = podman_usable()
    if reason:
        pytest.skip(reason)
    ensure_base_image()
    tag = f"localhost/aeguard-test:{os.getpid()}"
    podman(
        "build", "--format", "docker", "--network", "host", "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}",
        "-f", "deploy/Dockerfile", "-t", tag, ".",
        timeout_s=1200,
    )  # fmt: skip
    yield tag
    podman("rmi", "--force", tag, check=False)  # the layers stay cached for the next build


@pytest.fixture(scope="module")
def models_dir(tiny_model_path: Path) -> Path:
    """The suite's model directory, as `aeguard train --out models/tiny.onnx` left it (no chmod)."""
    models = tiny_model_path.parent
    assert models.name == "models"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(tiny_model_path.stat().st_mode) == 0o666 & ~umask
    return models


@dataclass
class Container:
    name: str
    port: int
    metrics_port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def inspect(self, template: str) -> str:
        return podman("inspect", "--format", template, self.name).stdout.strip()

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr


def health(target: str, timeout_s: float = 3) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s).status


def wait_serving(container: Container, deadline_s: float = 180) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if health(container.target) == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        if container.inspect("{{.State.Running}}") != "true":
            raise AssertionError(f"the container exited before serving:\n{container.logs()[-4000:]}")
        time.sleep(0.5)
    raise AssertionError(f"not SERVING within {deadline_s} s:\n{container.logs()[-4000:]}")


@pytest.fixture(scope="module")
def served(image: str, models_dir: Path) -> Iterator[Container]:
    """`docker run ... -v "$PWD/models:/models:ro" aeguard`, on loopback and free ports."""
    container = Container(f"aeguard-test-{os.getpid()}", free_port(), free_port())
    podman(
        "run", "-d", "--name", container.name, *RUN_FLAGS,
        "-e", "AEGUARD_HOST=127.0.0.1", "-e", f"AEGUARD_PORT={container.port}",
        "-e", f"AEGUARD_METRICS_PORT={container.metrics_port}", "-e", "AEGUARD_PROCESSES=2",
        "-v", f"{models_dir}:/models:ro", image,
    )  # fmt: skip
    try:
        wait_serving(container)
        yield container
    finally:
        podman("rm", "--force", "--time", "0", container.name, check=False)


def test_health_says_serving_then_a_score_matches_the_host(served: Container, tiny_dataset, tiny_model_path):
    assert health(served.target) == health_pb2.HealthCheckResponse.SERVING
    x = tiny_dataset.X[:64]
    with Client(served.target) as client:
        result = client.score(x, top_k=2)
    assert result.model == "tiny"
    expected = Scorer.load(tiny_model_path).score(x)
    np.testing.assert_allclose(result.score, expected.score, rtol=1e-5, atol=1e-6)
    assert len(result.top_features[0]) == 2


def test_metrics_count_the_score(served: Container, tiny_dataset):
    with Client(served.target) as client:
        client.score(tiny_dataset.X[:3])
    metrics = scrape(served.metrics_port)
    assert value(metrics, "aeguard_rpc_requests_total", method="Score", code="OK") >= 1
    assert value(metrics, "aeguard_samples_scored_total", model_name="tiny", model_version="1") >= 3
    assert any(labels.get("model_name") == "tiny" for labels in series(metrics, "aeguard_model_info"))


def test_every_process_runs_as_the_non_root_image_user(served: Container):
    pid = int(served.inspect("{{.State.Pid}}"))
    pids = [pid, *processes_under(pid)]
    assert len(pids) >= 3, f"the supervisor and its 2 workers: {pids}"
    for p in pids:
        uids = next(ln for ln in Path(f"/proc/{p}/status").read_text().splitlines() if ln.startswith("Uid:"))
        assert uids.split()[1:] == [str(IMAGE_UID)] * 4, (p, uids)


def processes_under(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            children += [int(child), *processes_under(int(child))]
    return children


def test_torch_is_not_in_the_image(served: Container):
    result = podman("exec", served.name, "python", "-c", "import torch", check=False)
    assert result.returncode == 1
    assert "No module named 'torch'" in result.stderr


def test_the_images_healthcheck_passes(served: Container, image: str):
    check = json.loads(podman("image", "inspect", "--format", "{{json .HealthCheck}}", image).stdout)
    assert check["Test"] == ["CMD", "python", "/opt/aeguard/healthcheck.py"]
    # The image's HEALTHCHECK, run by podman as Docker runs it (in the container, as its user).
    result = podman("healthcheck", "run", served.name, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert served.inspect("{{.State.Health.Status}}") == "healthy"


def test_aeguard_score_scores_a_mounted_directory(image: str, models_dir: Path, tiny_dataset, tmp_path):
    day = tmp_path / "day"
    day.mkdir()
    table = tiny_table(tiny_dataset)
    write_parquet(table.slice(0, 300), day / "part-0.parquet")
    write_parquet(table.slice(300), day / "part-1.parquet")
    out = tmp_path / "out"
    out.mkdir()
    if os.geteuid() == 0:
        os.chown(out, IMAGE_UID, IMAGE_UID)  # the output volume belongs to the image's user
    else:
        out.chmod(0o777)
    result = podman(
        "run", "--rm", *RUN_FLAGS, "-v", f"{models_dir}:/models:ro", "-v", f"{day}:/data/day:ro",
        "-v", f"{out}:/out", image,
        "score", "--model", "/models/tiny.onnx", "--input", "/data/day", "--output", "/out/scores.parquet",
        "--id-column", "id", "--json", "--no-progress",
        timeout_s=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(next(ln for ln in result.stdout.splitlines() if ln.startswith("{")))
    assert summary["rows"] == summary["scored_rows"] == len(tiny_dataset.X)
    scores = pq.read_table(out / "scores.parquet").sort_by("id")
    expected = Scorer.load(models_dir / "tiny.onnx").score(tiny_dataset.X)
    np.testing.assert_allclose(scores["score"].to_numpy(), expected.score, rtol=1e-5, atol=1e-6)


def test_an_unreadable_model_names_owner_mode_and_uid(image: str, tiny_model_path: Path, tmp_path):
    private = tmp_path / "models"
    private.mkdir()
    shutil.copyfile(tiny_model_path, private / "tiny.onnx")
    (private / "tiny.onnx").chmod(0o600)  # what `aeguard train` wrote before: owner-only
    result = podman(
        "run", "--rm", *RUN_FLAGS, "-e", "AEGUARD_HOST=127.0.0.1", "-e", f"AEGUARD_PORT={free_port()}",
        "-e", f"AEGUARD_METRICS_PORT={free_port()}", "-v", f"{private}:/models:ro", image,
        timeout_s=180, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "/models/tiny.onnx: permission denied: the file is not readable by this process" in output, output
    assert f"mode -rw------- (0600); this process runs as uid {IMAGE_UID}" in output, output
    assert "is it an ONNX model" not in output


def test_sigterm_drains_and_exits_0_within_the_grace(served: Container):
    # `podman stop` sends SIGTERM, then SIGKILL (exit 137) if the process is still there after --time.
    podman("stop", "--time", str(GRACE_S), served.name, timeout_s=GRACE_S + 60)
    assert served.inspect("{{.State.ExitCode}}") == "0", served.logs()[-4000:]
    assert "Traceback" not in served.logs()
