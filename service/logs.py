"""Log lines of the server: one JSON object per line on stderr, and warnings rate-limited per kind.

grpcio's own log lines about transport errors a client caused become one rate-limited line
(:func:`quiet_transport_errors`): when a client cancels a stream or closes its connection while
responses it never read are still queued, the last write fails inside grpc core and ``grpc.aio``
logged ``ExecuteBatchError raised in core by servicer method [...]`` at ERROR *with a traceback*,
once per such call, so a client could fill the error log at will. Nothing is wrong with the server
there, and the call is already counted (CANCELLED).
"""

from __future__ import annotations

import collections
import json
import logging
import sys
import threading
import time
from typing import Any

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


class RateLimitedLog:
    """A warning at most every ``interval_s`` seconds per kind, saying how many were not logged.

    Clients' mistakes are logged this way, never once per call: a client must not control the log volume.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: collections.Counter[str] = collections.Counter()

    def warning(self, kind: str, message: str, **extra: Any) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval_s:
            self._suppressed[kind] += 1
            return
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        self._log.warning(message, extra={"kind": kind, "suppressed_since_last": suppressed, **extra})


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
