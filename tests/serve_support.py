"""Start `aeguard serve` as a real subprocess for tests, read its ports, scrape its metrics, stop it."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without AEGUARD_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AEGUARD_", "PROMETHEUS_MULTIPROC"))}
    env.update(extra)
    return env


@dataclass
class Served:
    """A running `aeguard serve` subprocess."""

    proc: subprocess.Popen[str]
    port: int
    metrics_port: int
    ready: dict[str, Any]
    stderr_lines: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return scrape(self.metrics_port)

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.stderr_lines if x.startswith("{")]

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def start_serve(*args: str, env: dict[str, str] | None = None, timeout_s: float = 120) -> Served:
    """Start `aeguard serve ARGS` on ephemeral ports and wait for its "serving" line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", "0", "--metrics-port", "0", *args],
        cwd=REPO,
        env=env if env is not None else clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    stdout: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.append(x) for x in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    threading.Thread(target=lambda: [stdout.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = stdout.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early ({proc.returncode}): {''.join(lines)}") from None
            continue
        if line.startswith("{") and json.loads(line).get("event") == "serving":
            ready = json.loads(line)
            return Served(proc, ready["port"], ready["metrics_port"], ready, lines)
    proc.kill()
    raise RuntimeError(f"server not ready within {timeout_s} s: {''.join(lines)}")


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 20.0) -> int:
    """SIGTERM the process by its PID and wait; SIGKILL if it does not stop. Returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
    return int(proc.returncode)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    text = opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def raw_request(x: Any, **kw: Any) -> Any:
    """A ScoreRequest carrying ``x`` as raw little-endian float32 (the fast path)."""
    import numpy as np

    from service.rpc.api import aeguard_pb2 as pb

    x = np.asarray(x, dtype=np.float32)
    return pb.ScoreRequest(samples=pb.Matrix(rows=x.shape[0], cols=x.shape[1], raw=x.tobytes()), **kw)


def series(metrics: dict, name: str) -> list[dict[str, str]]:
    """The label sets of every sample called ``name``."""
    return [dict(labels) for (n, labels) in metrics if n == name]
