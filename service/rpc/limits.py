"""What a worker takes on at once: unary calls, open streams and request bytes, each with its own limit.

grpcio's ``maximum_concurrent_rpcs`` counts every call alike, so N idle streams made health checks
and Score answer RESOURCE_EXHAUSTED, and its refusals happened inside grpc, where nothing counted
them. Here the instrumented handlers ask :class:`Admission` instead:

- health (Check, Watch) is never limited;
- unary calls (Score, Encode, ...) count against ``max_concurrent_rpcs``;
- streams (ScoreStream) count against ``max_open_streams``, so idle streams cannot hold the unary
  limit;
- unary requests also take their size in bytes from ``max_inflight_bytes`` while they are handled.
  A call that would go over it is refused, unless nothing else is in flight (one call of the
  largest allowed message always gets through). Stream messages are handled one at a time per
  stream, so streams are bounded by ``max_open_streams`` times the message limit instead.

Every refusal is RESOURCE_EXHAUSTED with a message naming the limit and its setting, counted by
method and code like any other outcome and by reason in ``aeguard_rpc_refusals``.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

from service import errors
from service.metrics.serving import REFUSAL_REASONS

#: After a burst whose requests held at least this many bytes at once, freed memory is handed back
#: to the operating system (glibc keeps freed arenas otherwise: 320 MB stayed after a burst).
TRIM_AFTER_BYTES = 16 << 20


class Limits:
    """Counts of what is admitted now in one worker, and the checks against the limits (0 = none).

    Only the event loop's thread calls it: plain integers, no lock.
    """

    def __init__(
        self, max_calls: int, max_streams: int, max_bytes: int, refusals: Any, message_limit: int = 0
    ) -> None:
        self.max_calls = max_calls
        self.message_limit = message_limit
        self.max_streams = max_streams
        self.max_bytes = max_bytes
        self.calls = 0
        self.streams = 0
        self.bytes = 0
        #: Most bytes held at once since memory was last handed back (see :meth:`release_memory`).
        self.peak_bytes = 0
        self._refused = {reason: refusals.labels(reason) for reason in REFUSAL_REASONS}

    def enter(self, stream: bool) -> None:
        """Take on one call (``stream``: a stream) or raise :class:`~service.errors.LimitExceededError`."""
        if stream:
            if self.max_streams and self.streams >= self.max_streams:
                self._refuse(
                    "open_streams",
                    f"{self.streams} streams are open (limit {self.max_streams}, --max-open-streams); "
                    "retry later or on another connection",
                )
            self.streams += 1
        else:
            if self.max_calls and self.calls >= self.max_calls:
                self._refuse(
                    "concurrent_rpcs",
                    f"{self.calls} calls are being handled (limit {self.max_calls}, --max-concurrent-rpcs); "
                    "retry later",
                )
            self.calls += 1

    def leave(self, stream: bool) -> None:
        if stream:
            self.streams -= 1
        else:
            self.calls -= 1

    def take_bytes(self, size: int) -> None:
        """Hold ``size`` request bytes for a call, or raise if that would pass the limit."""
        if self.max_bytes and self.bytes and self.bytes + size > self.max_bytes:
            self._refuse(
                "inflight_bytes",
                f"requests of {self.bytes} bytes are being handled and this one has {size} (limit "
                f"{self.max_bytes} bytes per worker, --max-inflight-bytes); retry later or send smaller "
                "batches",
            )
        self.bytes += size
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def give_bytes(self, size: int) -> None:
        self.bytes -= size

    def _refuse(self, reason: str, message: str) -> None:
        self._refused[reason].inc()
        raise errors.LimitExceededError(message)

    def refuse_size(self) -> errors.LimitExceededError:
        """Count a request grpc dropped for its size; the error to answer with (the client already
        has grpc's own RESOURCE_EXHAUSTED)."""
        self._refused["message_size"].inc()
        return errors.LimitExceededError(
            f"no request received: larger than the message limit ({self.message_limit} bytes, "
            "--max-message-bytes), or none was sent"
        )

    def release_memory(self) -> bool:
        """Hand freed heap back to the OS once a large burst is over; True if it did."""
        if self.bytes or self.peak_bytes < TRIM_AFTER_BYTES:
            return False
        self.peak_bytes = 0
        return malloc_trim()


def malloc_trim() -> bool:
    """glibc's ``malloc_trim(0)``: return free heap pages to the OS (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):  # not glibc (musl): nothing to trim this way
        return False
