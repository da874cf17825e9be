"""`aeguard serve`: read the config, load the models, serve until SIGTERM/SIGINT, drain, exit 0.

Start-up order: bind the ports (health NOT_SERVING), load and warm up every model, health SERVING,
then print one JSON line on stdout with the bound ports (``{"event": "serving", "port": ...,
"metrics_port": ...}``) for scripts and tests. Logs are JSON lines on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from service import config as config_module
from service.config import ServerConfig

if TYPE_CHECKING:
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


def configure_logging(verbose: bool = False) -> None:
    """JSON lines on stderr for the whole process (replaces any earlier configuration)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config_module.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    configure_logging(getattr(args, "verbose", False))
    values = {k: v for k, v in vars(args).items() if k in ServerConfig.__dataclass_fields__}
    config = ServerConfig.from_sources(values)
    return serve(config)


def serve(config: ServerConfig, on_ready: Callable[[ServerHandle], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; return the exit code. ``on_ready`` runs once health is SERVING."""
    from prometheus_client import CollectorRegistry

    from service.errors import ModelLoadError
    from service.metrics import Metrics
    from service.model_store import ModelStore
    from service.rpc.server import build_server

    if not config.model:
        raise ModelLoadError(
            "no model to serve: pass --model PATH (a .onnx file or a directory) or set AEGUARD_MODEL"
        )
    metrics = Metrics(CollectorRegistry())
    store = ModelStore(
        intra_op_threads=config.intra_op_threads,
        inter_op_threads=config.inter_op_threads,
        drift_window=config.drift_window,
        drift_min_samples=config.drift_min_samples,
        listeners=[metrics],
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda sig, _frame: stop.set())
    handle = build_server(config, store, metrics)
    try:
        store.load_path(config.model, config.default_model)
    except ModelLoadError as exc:
        log.error("model refused", extra={"error": exc.message})
        handle.stop(0)
        raise
    handle.refresh_health()
    log.info(
        "serving",
        extra={"models": [m.name for m in store.models()], "default_model": store.default_name},
    )
    print(
        json.dumps(
            {
                "event": "serving",
                "host": config.host,
                "port": handle.port,
                "metrics_port": handle.metrics_port,
                "models": [m.name for m in store.models()],
                "default_model": store.default_name,
            }
        ),
        flush=True,
    )
    if on_ready is not None:
        on_ready(handle)
    while not stop.wait(1.0):  # wake up now and then so signals are handled promptly everywhere
        pass
    log.info("signal received: draining", extra={"grace_s": config.grace_s})
    handle.stop(config.grace_s)
    return 0
