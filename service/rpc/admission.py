"""Admission of a call before its method runs: refused while the server drains, and the token check.

Health (:data:`OPEN_PREFIX`) is always admitted: probes must reach it whatever the token settings
and during a drain.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from prometheus_client import Counter

from service import errors
from service.auth import TokenFile
from service.logs import RateLimitedLog

#: The one answer to a missing or a wrong token: it must not say which.
UNAUTHENTICATED_MESSAGE = "missing or invalid bearer token: send metadata 'authorization: Bearer <token>'"
#: Methods open without a token: probes must reach health whatever the token settings.
OPEN_PREFIX = "/grpc.health.v1.Health/"


@dataclass
class ServerCalls:
    """The calls of one server. Only the event loop's thread touches them."""

    #: Calls being handled now (all methods).
    active: int = 0
    #: When the last call started (``time.perf_counter``).
    last_start: float = 0.0
    #: Set when a drain starts: new calls (but health) are refused with UNAVAILABLE.
    draining: bool = False


class Admission:
    """Admission for one method: refused while draining (but health), and the token check."""

    def __init__(
        self,
        calls: ServerCalls,
        auth: TokenFile | None,
        is_open: bool,
        failures: Counter,
        client_errors: RateLimitedLog,
    ) -> None:
        self.calls = calls
        self._auth = None if is_open else auth
        self._is_open = is_open
        self._failures = failures  # aeguard_auth_failures, by reason
        self._client_errors = client_errors

    def check(self, context: grpc.aio.ServicerContext) -> None:
        """Raise NotReadyError while draining, UnauthenticatedError without a valid token."""
        if self.calls.draining and not self._is_open:
            raise errors.NotReadyError("the server is shutting down; retry (another replica will answer)")
        if self._auth is None:
            return
        metadata = context.invocation_metadata()
        if self._auth.client(metadata) is not None:
            return
        reason = "missing" if not any(k == "authorization" for k, _ in metadata or ()) else "invalid"
        self._failures.labels(reason).inc()
        self._client_errors.warning(
            "unauthenticated", "call refused: bad token", reason=reason, peer=context.peer()
        )
        raise errors.UnauthenticatedError(UNAUTHENTICATED_MESSAGE)
