"""Wiring: a ``grpc.aio`` server with the AnomalyDetector servicer, health, reflection and metrics.

:func:`build_server` starts an event loop in a thread of its own, builds and binds the server there,
and returns a :class:`ServerHandle` with the bound ports (port 0 = ephemeral, for tests) and
``stop(grace_s)``. The same handle serves one process (``--processes 1``, tests) and each worker
process of :mod:`service.rpc.supervisor`, which then binds with ``SO_REUSEPORT`` and leaves
``/metrics`` to the supervisor.

Why ``grpc.aio``: every call, stream and health ``Watch`` is a coroutine on one event loop, so open
streams hold no thread and cannot starve unary calls or probes (with grpcio's thread pool, four
idle streams took the whole server down). Health says NOT_SERVING until the store holds warmed-up
models and the ``ready`` gate opens (every worker ready), and again from the start of ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from service.auth import TokenFile
from service.config import ServerConfig
from service.errors import NotReadyError
from service.logs import quiet_transport_errors
from service.metrics import Metrics, ScrapeView, scrape_registry, serve_http
from service.model_store import ModelStore
from service.rpc.api import aeguard_pb2_grpc as pb_grpc
from service.rpc.instrumented import InstrumentedServer
from service.rpc.limits import Limits
from service.rpc.servicer import SERVICE_NAME, AnomalyDetectorServicer
from service.rpc.tls import TlsFiles

log = logging.getLogger(__name__)

#: Health is reported for the whole server ("") and for the scoring service by name.
HEALTH_SERVICES = ("", SERVICE_NAME)
#: How long past ``grace_s`` a stop may take before what is left is abandoned.
STOP_SLACK_S = 3.0
#: How often the loop checks the ready gate and publishes drift windows (multiprocess mode).
HOUSEKEEPING_S = 0.5
#: How often the ready gate is looked at until health says SERVING.
READY_POLL_S = 0.02
#: How often a drain checks whether the calls in flight have finished.
DRAIN_POLL_S = 0.01
#: A drain shuts grpc down once no call has started for this long (or the grace period is over).
DRAIN_QUIET_S = 0.1


class ServerHandle:
    """A running server: its ports, health, metrics, and a bounded graceful ``stop``."""

    def __init__(
        self,
        config: ServerConfig,
        store: ModelStore,
        metrics: Metrics,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        ready: Callable[[], bool],
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.registry = metrics.registry
        self.port = 0
        self.metrics_port = 0
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self._loop = loop
        self._thread = thread
        self._ready = ready
        self._httpd: Any = None
        self._serving: bool | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._housekeeping: asyncio.Task[None] | None = None
        #: Called once, on the event loop, when health first says SERVING (a worker tells its supervisor).
        self.on_serving: Callable[[], None] | None = None
        self.health_port = -1
        self.health_server: grpc.aio.Server | None = None
        self.instrumented: InstrumentedServer | None = None
        #: Files re-read on reload (None when the setting is off).
        self.tls: TlsFiles | None = None
        self.auth: TokenFile | None = None

    # -- health -----------------------------------------------------------------------------------
    def refresh_health(self) -> bool:
        """SERVING when the store has warmed-up models and the gate is open; returns serving."""
        return bool(self._call(self._refresh()))

    async def _refresh(self) -> bool:
        serving = self.store.ready and self._ready() and not self._stopped.is_set()
        if serving != self._serving:
            self._serving = serving
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in HEALTH_SERVICES:
                await self.health.set(name, status)
            log.info("health", extra={"serving": serving})
            if serving and self.on_serving is not None:
                self.on_serving()
                self.on_serving = None
        return serving

    async def _housekeep(self, publish_drift: bool) -> None:
        while True:
            # Until health says SERVING, look at the ready gate often: a supervisor waits for it.
            await asyncio.sleep(HOUSEKEEPING_S if self._serving else READY_POLL_S)
            try:
                await self._refresh()
                if publish_drift:
                    self.metrics.publish_drift()
                if self.instrumented is not None and self.instrumented.limits.release_memory():
                    log.debug("freed memory handed back after a burst of large requests")
            except Exception:  # health and drift must outlive any surprise; the next turn tries again
                log.exception("housekeeping failed")

    # -- stopping ---------------------------------------------------------------------------------
    def stop(self, grace_s: float | None = None) -> bool:
        """Health NOT_SERVING, refuse new RPCs, let in-flight ones finish within ``grace_s``, close.

        Returns False when calls were still running after ``grace_s`` plus a few seconds and were
        abandoned (the log names how many, by method).
        """
        with self._stop_lock:
            if self._stopped.is_set():
                return True
            self._stopped.set()
        log.info("stopping", extra={"grace_s": grace_s})
        clean = True
        try:
            self._call(self._stop(grace_s), timeout_s=(grace_s or 0) + STOP_SLACK_S)
        except FutureTimeout:
            clean = False
            log.error(
                "drain did not finish in time; abandoning the calls still running",
                extra={"grace_s": grace_s, "in_flight": self.in_flight()},
            )
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=STOP_SLACK_S)
        log.info("stopped", extra={"clean": clean})
        return clean

    async def _stop(self, grace_s: float | None) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        await self.health.enter_graceful_shutdown()
        # grpcio cancels calls that reached it but no handler yet, so shutting down at once turned
        # the calls that arrived around SIGTERM into CANCELLED. First the calls waiting behind a
        # busy loop are answered as usual, until the loop has caught up (a poll comes back on
        # time); then new calls are refused (UNAVAILABLE, counted) while the ones in flight finish
        # and until no call has come in for DRAIN_QUIET_S of free loop time; only then is grpc
        # shut down.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (grace_s or 0)
        if self.instrumented is not None:
            await self._until_caught_up(loop, deadline)
            self.instrumented.calls.draining = True
            await self._until_quiet(loop, deadline)
        remaining = max(DRAIN_POLL_S, deadline - loop.time())
        stops = [s.stop(remaining) for s in (self.server, self.health_server) if s is not None]
        await asyncio.gather(*stops)

    async def _until_caught_up(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        while loop.time() < deadline:
            before = loop.time()
            await asyncio.sleep(DRAIN_POLL_S)
            if loop.time() - before <= 2 * DRAIN_POLL_S:
                return

    async def _until_quiet(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Wait until no call runs and none has come in for DRAIN_QUIET_S of *free* loop time.

        Quiet is only counted over polls that came back on time: while a large request holds the
        loop, calls pile up inside grpc where no handler sees them, so a long gap between two
        calls' starts said nothing.
        """
        assert self.instrumented is not None
        calls = self.instrumented.calls
        quiet, seen_start = 0.0, calls.last_start
        while loop.time() < deadline and quiet < DRAIN_QUIET_S:
            before = loop.time()
            await asyncio.sleep(DRAIN_POLL_S)
            took = loop.time() - before
            busy = calls.active > self._open_streams() or calls.last_start != seen_start
            if busy or took > 2 * DRAIN_POLL_S:
                quiet, seen_start = 0.0, calls.last_start
            else:
                quiet += took

    def _open_streams(self) -> int:
        """Health Watch streams never end by themselves: they must not hold the drain up."""
        for family in self.metrics.rpc_in_flight.collect():
            for s in family.samples:
                if s.labels.get("method") == "Watch":
                    return int(s.value)
        return 0

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until :meth:`stop` has been called (or ``timeout_s``); True if stopped."""
        return self._stopped.wait(timeout_s)

    def in_flight(self) -> dict[str, float]:
        """RPCs being handled now, by method (from this process's in-flight gauge)."""
        counts: dict[str, float] = {}
        for family in self.metrics.rpc_in_flight.collect():
            for s in family.samples:
                if s.value:
                    counts[s.labels["method"]] = s.value
        return counts

    def _call(self, coro: Any, timeout_s: float | None = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)


def build_server(
    config: ServerConfig,
    store: ModelStore,
    metrics: Metrics | None = None,
    *,
    ready: Callable[[], bool] = lambda: True,
    on_serving: Callable[[], None] | None = None,
    reuse_port: bool = False,
    serve_metrics: bool = True,
) -> ServerHandle:
    """Create, bind and start the gRPC server (and, unless ``serve_metrics`` is False, /metrics).

    ``reuse_port`` binds with ``SO_REUSEPORT`` (worker processes sharing one port); ``ready`` is
    polled until it returns True before health may say SERVING; ``on_serving`` is called once, when
    it first does.
    """
    if metrics is None:
        metrics = Metrics(CollectorRegistry())
        store.add_listener(metrics)
        for model in store.models():
            metrics.model_loaded(model)
    quiet_transport_errors()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="aeguard-loop", daemon=True)
    thread.start()
    handle = ServerHandle(config, store, metrics, loop, thread, ready)
    handle.on_serving = on_serving
    if config.tls_cert:
        handle.tls = TlsFiles(config.tls_cert, config.tls_key, config.tls_client_ca or None)
    if config.auth_tokens_file:
        handle.auth = TokenFile(config.auth_tokens_file)
    try:
        handle._call(_start(handle, reuse_port, publish_drift=not serve_metrics))
        if serve_metrics:
            view = ScrapeView([metrics.registry], config.drift_min_samples, before=metrics.publish_drift)
            try:
                handle._httpd, handle.metrics_port = serve_http(
                    scrape_registry(view), config.metrics_address, config.metrics_port
                )
            except OSError as exc:
                raise NotReadyError(
                    f"cannot serve metrics on {config.metrics_address}:{config.metrics_port} ({exc}); "
                    "is the port in use? (--metrics-port)"
                ) from exc
    except BaseException:
        with contextlib.suppress(Exception):
            handle.stop(0)
        raise
    log.info(
        "listening",
        extra={
            "host": config.host,
            "port": handle.port,
            "metrics_port": handle.metrics_port,
            "health_port": handle.health_port,
            "tls": "mutual" if config.tls_client_ca else bool(config.tls_cert),
            "tokens": len(handle.auth.current) if handle.auth else 0,
        },
    )
    return handle


def _bind(server: grpc.aio.Server, host: str, port: int, credentials: grpc.ServerCredentials | None) -> int:
    address = f"{host}:{port}"
    try:
        bound = (
            server.add_secure_port(address, credentials)
            if credentials is not None
            else server.add_insecure_port(address)
        )
    except RuntimeError as exc:
        raise NotReadyError(f"cannot listen on {address} ({exc}); is the port in use?") from exc
    if bound == 0:
        raise NotReadyError(f"cannot listen on {address}; is the port in use?")
    return bound


async def _start(handle: ServerHandle, reuse_port: bool, publish_drift: bool) -> None:
    config = handle.config
    limit = config.message_limit_bytes
    limits = Limits(
        config.max_concurrent_rpcs,
        config.max_open_streams,
        config.max_inflight_bytes,
        handle.metrics.rpc_refusals,
        limit,
    )
    # Error mapping, limits and metrics on every method; tokens checked before the body is read.
    instrumented = handle.instrumented = InstrumentedServer(handle.metrics, handle.auth, limits)
    auth_check = instrumented.auth_interceptor()
    # No maximum_concurrent_rpcs: grpc's own limit counts health and idle streams alike and refuses
    # where nothing counts it; Limits does it per kind, counted.
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            # Workers share the port on purpose; otherwise two servers must never share one by
            # accident (tests bind many on port 0).
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
        interceptors=[auth_check] if auth_check is not None else None,
    )
    instrumented.server = server
    pb_grpc.add_AnomalyDetectorServicer_to_server(
        AnomalyDetectorServicer(
            handle.store,
            handle.metrics,
            config.max_batch_rows,
            config.micro_batch_rows,
            config.micro_batch_delay_ms / 1000,
            max_stream_series=config.max_stream_series,
            busy=lambda: instrumented.calls.active > 1,  # another call than the one asking
        ),
        instrumented,
    )
    health_pb2_grpc.add_HealthServicer_to_server(handle.health, instrumented)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)),
        instrumented,
    )
    instrumented.add_unknown_method_handler()
    host = f"[{config.host}]" if ":" in config.host else config.host
    credentials = handle.tls.credentials() if handle.tls is not None else None
    handle.server, handle.port = server, _bind(server, host, config.port, credentials)
    if config.health_port >= 0:
        # Probes that speak neither TLS nor tokens (Kubernetes' gRPC probes): health, nothing else.
        health_server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
        health_pb2_grpc.add_HealthServicer_to_server(handle.health, health_server)
        handle.health_server = health_server
        handle.health_port = _bind(health_server, host, config.health_port, None)
        await health_server.start()
    await handle._refresh()
    await server.start()
    handle._housekeeping = asyncio.get_running_loop().create_task(handle._housekeep(publish_drift))
