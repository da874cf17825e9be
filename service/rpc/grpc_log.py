"""grpcio's own log lines about transport errors a client caused: one rate-limited line, no traceback.

When a client cancels a stream or closes its connection while responses it never read are still
queued, the last write fails inside grpc core and ``grpc.aio`` logs ``ExecuteBatchError raised in
core by servicer method [...]`` at ERROR *with a traceback*, once per such call: a client could
fill the error log at will. Nothing is wrong with the server there; the call is already counted
(CANCELLED) by the instrumented handler. :func:`quiet_transport_errors` turns these records into a
warning at most every ``interval_s`` seconds, without traceback, saying how many were folded in.
"""

from __future__ import annotations

import logging
import threading
import time

#: grpcio's asyncio server logs through this logger.
GRPC_AIO_LOGGER = "grpc._cython.cygrpc"
#: Messages of records that report a client-side transport failure, not a server fault.
TRANSPORT_ERROR_PREFIXES = ("ExecuteBatchError raised in core", "Failed sending error status")
MESSAGE = "a call's transport failed (the client went away with responses unread); not a server error"


class TransportErrorFilter(logging.Filter):
    """Drops the traceback of transport-error records and lets one through per ``interval_s``."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._last = -float("inf")
        self._folded = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        if not text.startswith(TRANSPORT_ERROR_PREFIXES):
            return True
        now = time.monotonic()
        with self._lock:
            if now - self._last < self._interval_s:
                self._folded += 1
                return False
            self._last, folded, self._folded = now, self._folded, 0
        record.msg, record.args = MESSAGE, ()
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.kind = "transport"
        record.suppressed_since_last = folded
        record.grpc_message = text[:200]
        return True


def quiet_transport_errors(interval_s: float = 10.0) -> None:
    """Install the filter on grpcio's aio logger (once per process)."""
    logger = logging.getLogger(GRPC_AIO_LOGGER)
    if not any(isinstance(f, TransportErrorFilter) for f in logger.filters):
        logger.addFilter(TransportErrorFilter(interval_s))
