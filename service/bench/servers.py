"""Start the servers under test as child processes on loopback, wait until they serve, stop them."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from service.errors import AeguardError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    """A loopback port that is free right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A server child process: its command line, port and log file; stopped by its own PID."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path) -> None:
        self.name = name
        self.port = port
        self.target = f"{HOST}:{port}"
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        log.info("starting %s: %s", name, " ".join(argv))
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_serving(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll until the process answers on its port (health SERVING when it has health)."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AeguardError(
                        f"{self.name} exited with status {self.proc.returncode} before serving; "
                        f"see {self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # no health service: it answers
                        return
                time.sleep(0.2)
        self.stop()
        raise AeguardError(f"{self.name} did not serve within {timeout_s:.0f} s; see {self.log_path}")

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop on SIGTERM within %.0f s; killing it", self.name, STOP_TIMEOUT_S)
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def start_aeguard(model: Path, log_dir: Path, extra_args: list[str]) -> ServerProcess:
    """``aeguard serve`` on one model, as a user would start it."""
    port = free_port()
    argv = [
        sys.executable, "-m", "service.cli", "serve", "--model", str(model),
        "--host", HOST, "--port", str(port), "--metrics-port", str(free_port()), *extra_args,
    ]  # fmt: skip
    return ServerProcess("aeguard", argv, port, log_dir / "aeguard-serve.log")


def start_noop(log_dir: Path, *, workers: int, model_name: str, model_version: str) -> ServerProcess:
    """The no-op server with the same thread-pool size as aeguard."""
    port = free_port()
    argv = [
        sys.executable, "-m", "service.bench.noop", "--host", HOST, "--port", str(port),
        "--workers", str(workers), "--model-name", model_name, "--model-version", model_version,
    ]  # fmt: skip
    return ServerProcess("no-op server", argv, port, log_dir / "noop-serve.log")
