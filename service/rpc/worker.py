"""One worker process of a multi-process server: load the models, serve on the shared port, drain.

Started by :class:`service.rpc.supervisor.Supervisor` (``spawn``). A worker loads and warms up its
models *before* it binds the port, so the kernel never hands it a connection it cannot answer; it
then reports ready and waits for the supervisor's gate (every worker ready) before its health says
SERVING, and tells the supervisor once it does. Its metrics go to the multiprocess directory the
supervisor scrapes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from typing import Any

from service.config import ServerConfig
from service.errors import ModelLoadError
from service.logs import configure_logging
from service.rpc.process import Signals, make_store, serve_until_signal, start_reloader
from service.rpc.server import build_server

log = logging.getLogger(__name__)

#: ``<linux/prctl.h>``: deliver a signal to this process when its parent thread dies.
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Get SIGTERM (a drain) when the supervisor dies, however it died (kill -9, the OOM killer).

    Linux ``prctl(PR_SET_PDEATHSIG)`` through libc; the parent may be gone before the call, so its
    pid is checked afterwards. Elsewhere a no-op: the supervisor's own stop still drains us. The
    signal follows the *thread* that started us: the supervisor spawns from its main thread.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("cannot ask to be stopped with the supervisor", extra={"errno": ctypes.get_errno()})
    if os.getppid() != parent_pid:
        log.error("supervisor gone before start-up; exiting", extra={"parent_pid": parent_pid})
        os._exit(1)


def run_worker(
    config: ServerConfig, index: int, processes: int, events: Any, all_ready: Any, parent_pid: int = 0
) -> None:
    """The worker's whole life; ends the process (exit 0 after a drain, 2 if its models are refused)."""
    configure_logging(worker=index)
    signals = Signals()
    if parent_pid:
        die_with_parent(parent_pid)
    store, metrics = make_store(config, processes)
    try:
        store.load_path(config.model, config.default_model)
    except ModelLoadError as exc:
        log.error("model refused", extra={"error": exc.message})
        events.put(("failed", index, os.getpid(), exc.message))
        sys.exit(2)
    pid = os.getpid()
    handle = build_server(
        config,
        store,
        metrics,
        ready=all_ready.is_set,
        on_serving=lambda: events.put(("serving", index, pid)),
        reuse_port=True,
        serve_metrics=False,
    )
    reloader = start_reloader(handle, config)
    events.put(("ready", index, os.getpid(), [m.name for m in store.models()], store.default_name))
    serve_until_signal(handle, config, signals, reloader)
    logging.shutdown()
    # grpcio's own threads must not keep a drained worker alive.
    os._exit(0)
