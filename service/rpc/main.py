"""`aeguard serve`: read the config, load the models, serve until SIGTERM/SIGINT, drain, exit 0.

``--processes 1``: one process binds the ports (health NOT_SERVING), loads and warms up every model,
then says SERVING. More processes: :mod:`service.rpc.supervisor` starts the workers. Either way,
once serving, one JSON line goes to stdout with the bound ports (``{"event": "serving", "port":
..., "metrics_port": ...}``) for scripts and tests. Logs are JSON lines on stderr. SIGHUP never
stops the server.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service import config as config_module
from service.config import ServerConfig

if TYPE_CHECKING:
    from service.metrics import Metrics
    from service.model_store import ModelStore
    from service.reloader import Reloader
    from service.rpc.server import ServerHandle

log = logging.getLogger(__name__)

#: LogRecord attributes that are not ``extra=`` fields.
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's ``extra`` fields, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class _StaticFields(logging.Filter):
    """Adds fixed fields (e.g. the worker index) to every record."""

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__()
        self._fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self._fields.items():
            setattr(record, key, value)
        return True


def configure_logging(verbose: bool = False, **fields: Any) -> None:
    """JSON lines on stderr for the whole process (replaces any earlier configuration).

    ``fields`` are added to every line (a worker process passes ``worker=INDEX``).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    if fields:
        handler.addFilter(_StaticFields(fields))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


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


def make_store(config: ServerConfig, processes: int = 1) -> tuple[ModelStore, Metrics]:
    """A model store and the process's metrics, listening to it.

    With several processes each keeps ``drift_window / processes`` recent scores, so the windows
    summed at scrape time hold about the server's last ``drift_window`` scores.
    """
    from prometheus_client import CollectorRegistry

    from service.metrics import Metrics
    from service.model_store import ModelStore

    metrics = Metrics(CollectorRegistry())
    store = ModelStore(
        intra_op_threads=config.intra_op_threads,
        inter_op_threads=config.inter_op_threads,
        drift_window=max(1, config.drift_window // processes),
        drift_min_samples=config.drift_min_samples,
        listeners=[metrics],
    )
    return store, metrics


def serve(config: ServerConfig, on_ready: Callable[[Serving], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; return the exit code. ``on_ready`` runs once health is SERVING."""
    from service.errors import ModelLoadError
    from service.rpc.supervisor import available_cpus

    if not config.model:
        raise ModelLoadError(
            "no model to serve: pass --model PATH (a .onnx file or a directory) or set AEGUARD_MODEL"
        )
    processes = config.processes or available_cpus()
    if processes == 1:
        return _serve_one_process(config, on_ready)
    return _serve_processes(config, processes, on_ready)


def _serve_one_process(config: ServerConfig, on_ready: Callable[[Serving], None] | None) -> int:
    from service.errors import ModelLoadError
    from service.rpc.server import build_server
    from service.rpc.supervisor import install_signal_handlers

    store, metrics = make_store(config)
    stop, reload = threading.Event(), threading.Event()
    install_signal_handlers(stop.set, reload.set)
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
    serve_until_signal(handle, config, stop, reload, reloader)
    return 0


def _serve_processes(config: ServerConfig, processes: int, on_ready: Callable[[Serving], None] | None) -> int:
    from service.rpc.supervisor import Supervisor, install_signal_handlers

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


def start_reloader(handle: ServerHandle, config: ServerConfig) -> Reloader:
    """Watch the model path, the TLS files and the tokens file of a running server (hot reload)."""
    from service.reloader import Reloader, WatchedFiles

    groups = []
    if handle.tls is not None:
        groups.append(WatchedFiles("TLS certificate files", handle.tls.paths, handle.tls.reload))
    if handle.auth is not None:
        groups.append(WatchedFiles("tokens file", [handle.auth.path], handle.auth.reload))
    reloader = Reloader(
        handle.store,
        config.model,
        default_model=config.default_model,
        interval_s=config.reload_interval_s,
        groups=groups,
        on_model_reload=handle.metrics.model_reloaded,
    )
    reloader.start()
    return reloader


def serve_until_signal(
    handle: ServerHandle,
    config: ServerConfig,
    stop: threading.Event,
    reload: threading.Event,
    reloader: Reloader,
) -> None:
    """Reload on SIGHUP (``reload``) and every reload_interval_s; on SIGTERM/SIGINT (``stop``), drain."""
    while not stop.wait(0.2):  # wake up now and then so signals are handled promptly everywhere
        if reload.is_set():
            reload.clear()
            reloader.poke()
    log.info("signal received: draining", extra={"grace_s": config.grace_s})
    reloader.stop()
    handle.stop(config.grace_s)
