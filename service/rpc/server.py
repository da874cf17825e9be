"""Wiring: a grpcio server with the AnomalyDetector servicer, health, reflection, interceptor and /metrics.

:func:`build_server` binds and starts everything and returns a :class:`ServerHandle` with the bound
ports (port 0 = ephemeral, for tests) and ``stop(grace_s)``. Health says NOT_SERVING until the
store holds warmed-up models (``refresh_health``) and again from the start of ``stop``.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from service.config import ServerConfig
from service.errors import NotReadyError
from service.metrics import Metrics, serve_http
from service.model_store import ModelStore
from service.rpc.api import aeguard_pb2_grpc as pb_grpc
from service.rpc.interceptors import InstrumentedServer
from service.rpc.servicer import SERVICE_NAME, AnomalyDetectorServicer

log = logging.getLogger(__name__)

#: Health is reported for the whole server ("") and for the scoring service by name.
HEALTH_SERVICES = ("", SERVICE_NAME)


class ServerHandle:
    """A running server: its ports, health, metrics, and a graceful ``stop``."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        metrics_port: int,
        health_servicer: health.HealthServicer,
        store: ModelStore,
        metrics: Metrics,
        httpd: Any,
    ) -> None:
        self.server = server
        self.port = port
        self.metrics_port = metrics_port
        self.health = health_servicer
        self.store = store
        self.metrics = metrics
        self.registry = metrics.registry
        self._httpd = httpd
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    def refresh_health(self) -> bool:
        """SERVING when the store has warmed-up models, NOT_SERVING otherwise; returns serving."""
        serving = self.store.ready and not self._stopped.is_set()
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in HEALTH_SERVICES:
            self.health.set(name, status)
        return serving

    def stop(self, grace_s: float | None = None) -> None:
        """Health NOT_SERVING, refuse new RPCs, let in-flight ones finish within ``grace_s``, then close."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
        self.health.enter_graceful_shutdown()
        log.info("stopping", extra={"grace_s": grace_s})
        self.server.stop(grace_s).wait()
        self._httpd.shutdown()
        self._httpd.server_close()
        log.info("stopped")

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until :meth:`stop` has been called (or ``timeout_s``); True if stopped."""
        return self._stopped.wait(timeout_s)


def build_server(config: ServerConfig, store: ModelStore, metrics: Metrics | None = None) -> ServerHandle:
    """Create, bind and start the gRPC and metrics servers for ``store``'s models."""
    if metrics is None:
        metrics = Metrics(CollectorRegistry())
        store.add_listener(metrics)
        for model in store.models():
            metrics.model_loaded(model)
    metrics.rpc_threads.set(config.workers)
    limit = config.message_limit_bytes
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="aeguard-rpc"),
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            # Two servers must never share a port by accident (tests bind many on port 0).
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs or None,
    )
    instrumented = InstrumentedServer(server, metrics)  # error mapping and RPC metrics on every method
    pb_grpc.add_AnomalyDetectorServicer_to_server(
        AnomalyDetectorServicer(store, metrics, config.max_batch_rows, config.micro_batch_rows), instrumented
    )
    health_servicer = health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="aeguard-health"
        ),
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, instrumented)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), instrumented
    )
    host = f"[{config.host}]" if ":" in config.host else config.host
    # TLS (a later issue) would use server.add_secure_port with credentials from the config here.
    try:
        port = server.add_insecure_port(f"{host}:{config.port}")
    except RuntimeError as exc:
        raise NotReadyError(f"cannot listen on {host}:{config.port} ({exc}); is the port in use?") from exc
    if port == 0:
        raise NotReadyError(f"cannot listen on {host}:{config.port}; is the port in use?")
    try:
        httpd, metrics_port = serve_http(metrics.registry, config.metrics_address, config.metrics_port)
    except OSError as exc:
        server.stop(None)
        raise NotReadyError(
            f"cannot serve metrics on {config.metrics_address}:{config.metrics_port} ({exc}); "
            "is the port in use? (--metrics-port)"
        ) from exc
    server.start()
    handle = ServerHandle(server, port, metrics_port, health_servicer, store, metrics, httpd)
    handle.refresh_health()
    log.info(
        "listening",
        extra={"host": config.host, "port": port, "metrics_port": metrics_port, "workers": config.workers},
    )
    return handle
