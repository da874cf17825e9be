"""The life of one serving process, shared by ``--processes 1`` and each worker of a supervisor.

Signal handling (SIGTERM/SIGINT stop, SIGHUP reloads), the model store and the process's metrics,
the hot reloader, and the loop that waits for a signal and then drains. :mod:`service.rpc.main`
(one process) and :mod:`service.rpc.worker` (one of N) both build on it; neither imports the other.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from service.config import ServerConfig
from service.metrics import Metrics
from service.model_store import ModelStore
from service.reloader import Reloader, WatchedFiles
from service.rpc.server import ServerHandle

log = logging.getLogger(__name__)


def install_signal_handlers(on_stop: Callable[[], None], on_reload: Callable[[], None]) -> None:
    """SIGTERM/SIGINT stop, SIGHUP reloads: never the default actions (exit at once)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _sig, _frame: on_stop())
    signal.signal(signal.SIGHUP, lambda _sig, _frame: on_reload())


class Signals:
    """SIGTERM/SIGINT set :attr:`stop`, SIGHUP sets :attr:`reload` (installed on construction)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()
        install_signal_handlers(self.stop.set, self.reload.set)


def make_store(config: ServerConfig, processes: int = 1) -> tuple[ModelStore, Metrics]:
    """A model store and the process's metrics, listening to it.

    With several processes each keeps ``drift_window / processes`` recent scores, so the windows
    summed at scrape time hold about the server's last ``drift_window`` scores.
    """
    metrics = Metrics(CollectorRegistry())
    store = ModelStore(
        intra_op_threads=config.intra_op_threads,
        inter_op_threads=config.inter_op_threads,
        drift_window=max(1, config.drift_window // processes),
        drift_min_samples=config.drift_min_samples,
        listeners=[metrics],
    )
    return store, metrics


def start_reloader(handle: ServerHandle, config: ServerConfig) -> Reloader:
    """Watch the model path, the TLS files and the tokens file of a running server (hot reload)."""
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
    handle: ServerHandle, config: ServerConfig, signals: Signals, reloader: Reloader
) -> None:
    """Reload on SIGHUP and every reload_interval_s; on SIGTERM/SIGINT, drain within grace_s."""
    while not signals.stop.wait(0.2):  # wake up now and then so signals are handled promptly everywhere
        if signals.reload.is_set():
            signals.reload.clear()
            reloader.poke()
    log.info("signal received: draining", extra={"grace_s": config.grace_s})
    reloader.stop()
    handle.stop(config.grace_s)
