"""Start the servers under test as child processes on loopback, wait until they serve, stop them."""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from bench import procs
from service.errors import AeguardError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0


def _port_from_line(line: str) -> int | None:
    """The bound port announced on stdout: aeguard's JSON ``{"event": "serving", "port": N}``
    or the no-op server's ``port=N``."""
    line = line.strip()
    if line.startswith("{"):
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            return None
        return int(doc["port"]) if doc.get("event") == "serving" and "port" in doc else None
    m = re.fullmatch(r"port=(\d+)", line)
    return int(m.group(1)) if m else None


class ServerProcess:
    """A server child process bound to an ephemeral port it announces; stopped by its own PID.

    Both output streams go to ``log_path``; stdout is read first for the port announcement.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        *,
        port: int = 0,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.port = port  #: known in advance for servers that do not announce theirs (MLServer)
        self.announcement: dict[str, Any] = {}  #: aeguard's "serving" JSON line
        self._log: IO[bytes] = log_path.open("wb")
        self._announced = threading.Event()
        if port:
            self._announced.set()
        log.info("starting %s: %s", name, " ".join(argv))
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL, cwd=cwd, env=env
        )
        self._reader = threading.Thread(target=self._read_stdout, daemon=True, name=f"{name}-stdout")
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._log.write(raw)
            if not self._announced.is_set():
                line = raw.decode(errors="replace")
                port = _port_from_line(line)
                if port:
                    self.port = port
                    if line.lstrip().startswith("{"):
                        self.announcement = json.loads(line)
                    self._announced.set()
        self._announced.set()  # the process ended: stop waiting

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_sample(self) -> dict[int, float]:
        """CPU seconds used so far by every process of the server's tree (supervisor and workers)."""
        return procs.tree_cpu_s(self.pid)

    def wait_serving(
        self, timeout_s: float = READY_TIMEOUT_S, probe: Callable[[Any], bool] | None = None
    ) -> None:
        """Poll until the process answers on its port: health SERVING when it has health, and
        ``probe(channel)`` True when given (a server without health: one real call succeeds)."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout_s
        if not self._announced.wait(timeout_s) or not self.port:
            tail = self.log_tail()
            self.stop()
            raise AeguardError(
                f"{self.name} announced no port (exit status {self.proc.returncode}); "
                f"see {self.log_path}:\n{tail}"
            )
        # A TLS server announces a plaintext health-only port: readiness is asked there.
        health_port = int(self.announcement.get("health_port", -1)) if self.announcement else -1
        health_target = f"{HOST}:{health_port}" if health_port > 0 else self.target
        with grpc.insecure_channel(health_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AeguardError(
                        f"{self.name} exited with status {self.proc.returncode} before serving; "
                        f"see {self.log_path}:\n{self.log_tail()}"
                    )
                if self._check(health, health_pb2) and (probe is None or probe(channel)):
                    return
                time.sleep(0.2)
        self.stop()
        raise AeguardError(f"{self.name} did not serve within {timeout_s:.0f} s; see {self.log_path}")

    @staticmethod
    def _check(health: Any, health_pb2: Any) -> bool:
        import grpc

        try:
            reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError as exc:
            return bool(exc.code() == grpc.StatusCode.UNIMPLEMENTED)  # no health service: it answers

    def log_tail(self, lines: int = 20) -> str:
        if not self._log.closed:
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
        self._reader.join(timeout=5)
        self._log.close()


def start_aeguard(
    model: Path, log_dir: Path, extra_args: list[str], *, name: str = "aeguard", args: tuple[str, ...] = ()
) -> ServerProcess:
    """``aeguard serve`` on one model, as a user would start it; ``args`` win over ``extra_args``."""
    argv = [
        sys.executable, "-m", "service.cli", "serve", "--model", str(model),
        "--host", HOST, "--port", "0", "--metrics-port", "0", *extra_args, *args,
    ]  # fmt: skip
    return ServerProcess(name, argv, log_dir / f"{name.replace(' ', '-')}.log")


def make_tls_material(directory: Path) -> tuple[Path, Path, Path, str]:
    """A self-signed certificate for 127.0.0.1 (openssl), its key, a tokens file and the token."""
    import secrets
    import subprocess

    directory.mkdir(parents=True, exist_ok=True)
    cert, key, tokens = directory / "server.pem", directory / "server.key", directory / "tokens"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=aeguard-bench",
            "-addext", f"subjectAltName=IP:{HOST}",
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    token = secrets.token_urlsafe(32)
    tokens.write_text(f"bench:{token}\n")
    return cert, key, tokens, token


def start_noop(
    log_dir: Path, *, workers: int, model_name: str, model_version: str, aio: bool = False
) -> ServerProcess:
    """The no-op server, one process: grpcio's sync server on ``workers`` threads, or ``grpc.aio``."""
    argv = [
        sys.executable, "-m", "bench.noop", "--host", HOST, "--port", "0",
        "--workers", str(workers), "--model-name", model_name, "--model-version", model_version,
        *(["--aio"] if aio else []),
    ]  # fmt: skip
    name = "no-op aio" if aio else "no-op sync"
    return ServerProcess(name, argv, log_dir / f"{name.replace(' ', '-')}.log")


def free_port(host: str = HOST) -> int:
    """A port free on ``host`` now (for servers that cannot bind port 0 and announce it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
