"""`aeguard serve`: read the config, load the models, serve until SIGTERM/SIGINT, drain, exit 0.

``--processes 1``: one process binds the ports (health NOT_SERVING), loads and warms up every model,
then says SERVING. More processes: :mod:`service.rpc.supervisor` starts the workers. Every serving
process lives by :mod:`service.rpc.process` (signals, store, reloader, drain). Once serving, either
way, one JSON line goes to stdout with the bound ports (``{"event": "serving", "port":
..., "metrics_port": ...}``) for scripts and tests. Logs are JSON lines on stderr. SIGHUP never
stops the server.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import disable_created_metrics

from service import config as config_module
from service.config import ServerConfig
from service.errors import ModelLoadError
from service.logs import configure_logging
from service.rpc.process import (
    Signals,
    install_signal_handlers,
    make_store,
    serve_until_signal,
    start_reloader,
)
from service.rpc.server import build_server
from service.rpc.supervisor import Supervisor, available_cpus

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config_module.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    # grpc core logs each failed TLS handshake at INFO: a client must not control the log volume.
    # Inherited by the worker processes; an operator can still set GRPC_VERBOSITY themselves.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    configure_logging(getattr(args, "verbose", False))
    values = {k: v for k, v in vars(args).items() if k in ServerConfig.__dataclass_fields__}
    config = ServerConfig.from_sources(values)
    return serve(config)


@dataclass(frozen=True)
class Serving:
    """What a started server tells its caller (and prints as one JSON line on stdout)."""

    host: str
    port: int
    metrics_port: int
    models: list[str]
    default_model: str
    processes: int
    health_port: int = -1

    def announce(self) -> None:
        print(json.dumps({"event": "serving", **dataclasses.asdict(self)}), flush=True)


def serve(config: ServerConfig, on_ready: Callable[[Serving], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; return the exit code. ``on_ready`` runs once health is SERVING."""
    if not config.model:
        raise ModelLoadError(
            "no model to serve: pass --model PATH (a .onnx file or a directory) or set AEGUARD_MODEL"
        )
    processes = config.processes or available_cpus()
    # Multi-process exposition has no `*_created` series; one process must not have them either,
    # so /metrics reads the same whatever --processes says.
    disable_created_metrics()
    if processes == 1:
        return _serve_one_process(config, on_ready)
    return _serve_processes(config, processes, on_ready)


def _serve_one_process(config: ServerConfig, on_ready: Callable[[Serving], None] | None) -> int:
    store, metrics = make_store(config)
    signals = Signals()
    handle = build_server(config, store, metrics)  # health NOT_SERVING until the models are warm
    try:
        store.load_path(config.model, config.default_model)
    except ModelLoadError as exc:
        log.error("model refused", extra={"error": exc.message})
        handle.stop(0)
        raise
    handle.refresh_health()
    reloader = start_reloader(handle, config)  # before announcing: a file published after it is seen
    serving = Serving(
        config.host,
        handle.port,
        handle.metrics_port,
        [m.name for m in store.models()],
        store.default_name,
        1,
        handle.health_port,
    )
    log.info("serving", extra={"models": serving.models, "default_model": serving.default_model})
    serving.announce()
    if on_ready is not None:
        on_ready(serving)
    serve_until_signal(handle, config, signals, reloader)
    return 0


def _serve_processes(config: ServerConfig, processes: int, on_ready: Callable[[Serving], None] | None) -> int:
    supervisor = Supervisor(config, processes)
    install_signal_handlers(supervisor.request_stop, supervisor.request_reload)
    try:
        supervisor.start()
        serving = Serving(
            config.host,
            supervisor.port,
            supervisor.metrics_port,
            supervisor.models,
            supervisor.default_model,
            processes,
            supervisor.health_port,
        )
        log.info("serving", extra={"models": serving.models, "processes": processes})
        serving.announce()
        if on_ready is not None:
            on_ready(serving)
        supervisor.run()
        log.info("signal received: draining", extra={"grace_s": config.grace_s})
    finally:
        supervisor.stop()
    return 0
