"""`aeguard serve --processes N`: a supervising parent and N worker processes sharing one port.

One Python process cannot use a second core for scoring (the GIL), so N workers each run their
own ``grpc.aio`` server on the same port, as grpc's multiprocessing example does: the parent
reserves the port with ``SO_REUSEPORT`` and starts the workers (``spawn``: fresh interpreters, no
grpc object ever crosses a fork); each worker loads and warms up its own models, then binds the
port with ``SO_REUSEPORT``. The kernel balances *connections*, not calls, across the listening
workers: a client that opens one channel talks to one worker, so clients should open several
channels or sit behind a load balancer.

The parent serves ``/metrics`` for all of them (prometheus-client's multiprocess mode), counts and
replaces a worker that dies, and opens the ready gate (health SERVING in every worker) only once
every worker has reported its models warmed up. SIGTERM/SIGINT drain every worker within
``--grace-s``; a worker still alive a few seconds later is killed and the log says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
import queue
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from service.config import ServerConfig
from service.errors import ModelLoadError, NotReadyError
from service.metrics import MULTIPROC_ENV, ScrapeView, SupervisorMetrics, scrape_registry, serve_http
from service.rpc.worker import run_worker

log = logging.getLogger(__name__)

#: Seconds past ``grace_s`` the parent waits for draining workers before killing them.
KILL_AFTER_S = 5.0
#: Restart back-off for a worker that keeps dying: first delay, doubled up to the cap.
RESTART_DELAY_S = 0.5
RESTART_DELAY_MAX_S = 30.0
#: A worker that lived this long is healthy again: its next death restarts it at once.
STABLE_AFTER_S = 60.0


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup (v2 or v1) CPU quota."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    return max(1, min(n, math.ceil(quota))) if quota is not None else max(1, n)


def _cgroup_quota() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        limit, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    with contextlib.suppress(OSError, ValueError):
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    return None


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, non-listening ``SO_REUSEPORT`` socket: holds the port while workers come and go.

    ``SO_REUSEPORT`` would also let this server share a port with another process of the same user
    that listens with it (another aeguard), splitting its traffic silently: a port something already
    answers on is refused instead.
    """
    if port:
        with contextlib.suppress(OSError), socket.create_connection((_connectable(host), port), timeout=0.5):
            raise NotReadyError(f"cannot listen on {host}:{port}: another process listens there")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise NotReadyError(f"cannot listen on {host}:{port} ({exc}); is the port in use?") from exc
    return sock


def _connectable(host: str) -> str:
    """Where to look for a listener on a wildcard address."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


@dataclass
class _Worker:
    index: int
    process: Any
    started_at: float
    ready: bool = False
    serving: bool = False  #: its health says SERVING (after the gate opened)
    failures: int = 0


class Supervisor:
    """Starts, watches, replaces and drains the worker processes of one server."""

    def __init__(self, config: ServerConfig, processes: int) -> None:
        self.config = config
        self.processes = processes
        self._ctx = multiprocessing.get_context("spawn")
        self._events: Any = self._ctx.Queue()
        self._all_ready = self._ctx.Event()
        self._workers: dict[int, _Worker] = {}
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._restart_at: dict[int, float] = {}
        self.models: list[str] = []
        self.default_model = ""
        self.port = 0
        self.metrics_port = 0
        self.health_port = -1
        self._health_sock: socket.socket | None = None
        self._metrics_dir = ""
        self._owns_metrics_dir = False
        self._sock: socket.socket | None = None
        self._httpd: Any = None

    # -- start-up ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Reserve the port, start every worker, wait until all are ready; raise if one cannot start."""
        self._prepare_metrics_dir()
        self._sock = reserve_port(self.config.host, self.config.port)
        self.port = self._sock.getsockname()[1]
        if self.config.health_port >= 0:
            self._health_sock = reserve_port(self.config.host, self.config.health_port)
            self.health_port = self._health_sock.getsockname()[1]
        self.config = dataclasses.replace(self.config, port=self.port, health_port=self.health_port)
        self._serve_metrics()
        for index in range(self.processes):
            self._spawn(index)
        while not all(w.ready for w in self._workers.values()):
            if self._stop.is_set():
                return
            self._handle_events(timeout_s=0.2, starting=True)
            for w in self._workers.values():
                if not w.process.is_alive() and not w.ready:
                    self._drain_queue(starting=True)
                    raise ModelLoadError(
                        f"worker {w.index} exited with code {w.process.exitcode} before it was ready "
                        "(see its log above)"
                    )
        self._all_ready.set()
        # Announce only once every worker's health says SERVING: a client that reads the "serving"
        # line must not reach a worker that has not yet seen the gate open.
        while not all(w.serving for w in self._workers.values()):
            if self._stop.is_set():
                return
            self._handle_events(timeout_s=0.2, starting=True)
            for w in self._workers.values():
                if not w.process.is_alive():
                    raise ModelLoadError(
                        f"worker {w.index} exited with code {w.process.exitcode} while starting (see its log)"
                    )
        self._sup_metrics.processes.set(len(self._workers))
        log.info("all workers ready", extra={"processes": self.processes, "port": self.port})

    def _prepare_metrics_dir(self) -> None:
        given = os.environ.get(MULTIPROC_ENV)
        if given:
            path = Path(given)
            path.mkdir(parents=True, exist_ok=True)
            for old in path.glob("*.db"):  # values of an earlier run must not be added to ours
                old.unlink()
            self._metrics_dir = str(path)
        else:
            self._metrics_dir = tempfile.mkdtemp(prefix="aeguard-metrics-")
            self._owns_metrics_dir = True
            os.environ[MULTIPROC_ENV] = self._metrics_dir  # inherited by the spawned workers

    def _serve_metrics(self) -> None:
        workers = CollectorRegistry()
        MultiProcessCollector(workers, path=self._metrics_dir)
        own = CollectorRegistry()
        self._sup_metrics = SupervisorMetrics(own)
        view = ScrapeView([workers, own], self.config.drift_min_samples)
        try:
            self._httpd, self.metrics_port = serve_http(
                scrape_registry(view), self.config.metrics_address, self.config.metrics_port
            )
        except OSError as exc:
            raise NotReadyError(
                f"cannot serve metrics on {self.config.metrics_address}:{self.config.metrics_port} "
                f"({exc}); is the port in use? (--metrics-port)"
            ) from exc

    def _spawn(self, index: int) -> None:
        process = self._ctx.Process(
            target=run_worker,
            args=(self.config, index, self.processes, self._events, self._all_ready, os.getpid()),
            name=f"aeguard-worker-{index}",
            daemon=False,
        )
        process.start()
        previous = self._workers.get(index)
        self._workers[index] = _Worker(
            index, process, time.monotonic(), failures=previous.failures if previous else 0
        )
        log.info("worker started", extra={"worker": index, "pid": process.pid})

    # -- running ----------------------------------------------------------------------------------
    def run(self) -> None:
        """Watch the workers until :meth:`request_stop`; replace any that dies."""
        while not self._stop.is_set():
            if self._reload.is_set():
                self._reload.clear()
                # Not to a worker still starting: until its handlers are installed, SIGHUP kills it
                # (it reads the current files as it loads anyway).
                self._signal_workers(signal.SIGHUP, ready_only=True)
            self._handle_events(timeout_s=0.2, starting=False)
            now = time.monotonic()
            for index, w in list(self._workers.items()):
                if w.process.is_alive() or self._stop.is_set():
                    continue
                if index not in self._restart_at:
                    self._worker_died(w, now)
                elif now >= self._restart_at[index]:
                    del self._restart_at[index]
                    self._spawn(index)
            alive = sum(1 for w in self._workers.values() if w.process.is_alive() and w.ready)
            self._sup_metrics.processes.set(alive)

    def _worker_died(self, w: _Worker, now: float) -> None:
        code = w.process.exitcode
        reason = f"signal {-code}" if code is not None and code < 0 else f"exit {code}"
        mark_process_dead(w.process.pid, self._metrics_dir)
        w.failures = 0 if now - w.started_at > STABLE_AFTER_S else w.failures + 1
        delay = 0.0 if w.failures <= 1 else min(RESTART_DELAY_MAX_S, RESTART_DELAY_S * 2 ** (w.failures - 2))
        log.error(
            "worker died; replacing it",
            extra={"worker": w.index, "pid": w.process.pid, "reason": reason, "restart_in_s": delay},
        )
        self._sup_metrics.restarts.labels("signal" if code is not None and code < 0 else "exit").inc()
        self._restart_at[w.index] = now + delay

    def _handle_events(self, timeout_s: float, starting: bool) -> None:
        try:
            event = self._events.get(timeout=timeout_s)
        except queue.Empty:
            return
        self._on_event(event, starting)
        self._drain_queue(starting)

    def _drain_queue(self, starting: bool) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            self._on_event(event, starting)

    def _on_event(self, event: tuple[Any, ...], starting: bool) -> None:
        kind, index = event[0], event[1]
        w = self._workers.get(index)
        if kind == "ready" and w is not None and w.process.pid == event[2]:
            w.ready = True
            self.models, self.default_model = event[3], event[4]
            if not starting:
                log.info("worker ready", extra={"worker": index, "pid": event[2]})
        elif kind == "serving" and w is not None and w.process.pid == event[2]:
            w.serving = True
        elif kind == "failed" and starting:
            raise ModelLoadError(event[3])

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    # -- stopping ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """SIGTERM every worker (each drains within grace_s), kill what is left, close everything."""
        self._stop.set()
        grace_s = self.config.grace_s
        self._signal_workers(signal.SIGTERM)
        deadline = time.monotonic() + grace_s + KILL_AFTER_S
        for w in self._workers.values():
            w.process.join(max(0.0, deadline - time.monotonic()))
        for w in self._workers.values():
            if w.process.is_alive():
                log.error(
                    "worker did not exit after the grace period; killing it (its calls are abandoned)",
                    extra={"worker": w.index, "pid": w.process.pid, "grace_s": grace_s},
                )
                w.process.kill()
                w.process.join(5)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for sock in (self._sock, self._health_sock):
            if sock is not None:
                sock.close()
        if self._owns_metrics_dir:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        log.info("stopped", extra={"processes": self.processes})

    def _signal_workers(self, signum: int, ready_only: bool = False) -> None:
        for w in self._workers.values():
            if ready_only and not w.ready:
                continue
            if w.process.is_alive() and w.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.process.pid, signum)

    def pids(self) -> Iterator[int]:
        for w in self._workers.values():
            if w.process.pid is not None:
                yield w.process.pid
