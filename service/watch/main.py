"""`aeguard watch`: score live Prometheus metrics with a model trained on their history; /metrics out."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import threading

from prometheus_client import CollectorRegistry

from service import config as config_module
from service.metrics import serve_http
from service.metrics.watch import ModelListener, ScoreBoard, WatchMetrics
from service.model_store import ModelStore
from service.reloader import Reloader
from service.watch.config import WatchSettings
from service.watch.scheduler import Watcher, check_models

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config_module.add_arguments(parser, WatchSettings)


def settings_from_args(args: argparse.Namespace) -> WatchSettings:
    values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(WatchSettings)}
    return config_module.settings_from_sources(WatchSettings, values)


@dataclasses.dataclass
class WatchHandle:
    """A running watch: its metrics port, and how to stop it."""

    metrics_port: int
    watcher: Watcher
    reloader: Reloader
    thread: threading.Thread
    httpd: object

    def stop(self, timeout_s: float = 2.0) -> None:
        self.watcher.stop.set()
        self.reloader.stop()
        self.thread.join(timeout=timeout_s)  # a query in flight is abandoned (daemon thread)
        self.httpd.shutdown()  # type: ignore[attr-defined]
        self.httpd.server_close()  # type: ignore[attr-defined]


def start_watch(settings: WatchSettings) -> WatchHandle:
    """Load the models, open /metrics, start the reloader and the watch loop; return a handle."""
    registry = CollectorRegistry(auto_describe=True)
    metrics = WatchMetrics(registry)
    board = ScoreBoard()
    registry.register(board)
    store = ModelStore(listeners=[ModelListener(metrics, board)])
    store.load_path(settings.model)
    check_models(store)
    reloader = Reloader(
        store,
        settings.model,
        interval_s=settings.reload_interval_s,
        on_model_reload=lambda result: metrics.reloads.labels(result).inc(),
    )
    httpd, port = serve_http(registry, settings.host, settings.metrics_port)
    watcher = Watcher(settings, store, metrics, board)
    thread = threading.Thread(target=watcher.run, name="aeguard-watch", daemon=True)
    reloader.start()
    thread.start()
    return WatchHandle(port, watcher, reloader, thread, httpd)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    handle = start_watch(settings)
    names = ", ".join(f"{m.name} {m.version}" for m in handle.watcher.store.models())
    print(
        f"aeguard watch: {settings.prometheus} every {settings.interval} with {names}; "
        f"metrics on http://{settings.host}:{handle.metrics_port}/metrics",
        flush=True,
    )
    stop = handle.watcher.stop
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    signal.signal(signal.SIGHUP, lambda signum, frame: handle.reloader.poke())
    while not stop.wait(0.5):
        pass
    log.info("stopping")
    handle.stop()
    print("aeguard watch: stopped", flush=True)
    return 0
