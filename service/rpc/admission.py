"""Admission of a call before its method runs: the token check, refusal while the server drains, limits.

- The bearer token is checked by :class:`AuthInterceptor`, on the call's metadata alone, *before*
  grpc reads the request body: an unauthenticated 64 MB request is never received into Python nor
  decoded.
- :class:`Admission` (one per method) refuses new calls while the server drains and applies the
  worker's :class:`~service.rpc.limits.Limits`.
- :func:`unknown_method_handler` answers methods no service has, counted under one label.

Health (:data:`OPEN_PREFIX`) is always admitted: probes must reach it whatever the token settings,
the limits, and during a drain.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import Counter

from service import errors
from service.auth import TokenFile
from service.logs import RateLimitedLog
from service.rpc.decoding import Undecodable
from service.rpc.limits import Limits

#: The one answer to a missing or a wrong token: it must not say which.
UNAUTHENTICATED_MESSAGE = "missing or invalid bearer token: send metadata 'authorization: Bearer <token>'"
#: Methods open without a token: probes must reach health whatever the token settings.
OPEN_PREFIX = "/grpc.health.v1.Health/"
#: ``method`` label of calls to a method no service here has (one label for all: bounded).
UNKNOWN_METHOD = "unknown"


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
    """Admission for one method: refused while draining, and the worker's limits (health: neither)."""

    def __init__(self, calls: ServerCalls, limits: Limits, is_open: bool) -> None:
        self.calls = calls
        self.limits = limits
        self.is_open = is_open

    def check(self, context: grpc.aio.ServicerContext) -> None:
        """Raise NotReadyError while draining."""
        if self.calls.draining and not self.is_open:
            raise errors.NotReadyError("the server is shutting down; retry (another replica will answer)")

    def request_bytes(self, request: Any) -> int:
        """Take ``request``'s size from the in-flight budget (raises if over); 0 when not counted."""
        if self.is_open or not self.limits.max_bytes or isinstance(request, Undecodable):
            return 0
        size = int(request.ByteSize())
        self.limits.take_bytes(size)
        return size


class TokenCheck:
    """The bearer-token check: raises :class:`~service.errors.UnauthenticatedError`, counted by reason
    in ``aeguard_auth_failures`` and logged rate-limited."""

    def __init__(self, auth: TokenFile, failures: Counter, client_errors: RateLimitedLog) -> None:
        self._auth = auth
        self._failures = failures
        self._client_errors = client_errors

    def __call__(self, metadata: Any) -> None:
        if self._auth.client(metadata) is not None:
            return
        reason = "missing" if not any(k == "authorization" for k, _ in metadata or ()) else "invalid"
        self._failures.labels(reason).inc()
        self._client_errors.warning("unauthenticated", "call refused: bad token", reason=reason)
        raise errors.UnauthenticatedError(UNAUTHENTICATED_MESSAGE)


Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
#: Counts a call answered before any handler ran: ``(full method or UNKNOWN_METHOD, code name)``.
Refused = Callable[[str, str], None]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid bearer token before grpc receives or decodes their body.

    grpc reads a unary request's whole message before it calls the method's handler; an
    interceptor runs earlier, on the metadata alone. A refused call gets a handler that takes its
    requests as a stream and aborts at once without reading them.
    """

    def __init__(self, check: TokenCheck, refused: Refused) -> None:
        self._check = check
        self._refused = refused

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if not method.startswith(OPEN_PREFIX):
            try:
                self._check(handler_call_details.invocation_metadata)
            except errors.UnauthenticatedError as exc:
                return _refusing_handler(grpc.StatusCode.UNAUTHENTICATED, exc.message, method, self._refused)
        return await continuation(handler_call_details)


def _refusing_handler(
    code: grpc.StatusCode, message: str, method: str, refused: Refused
) -> grpc.RpcMethodHandler:
    async def refuse(_requests: Any, context: grpc.aio.ServicerContext) -> None:
        refused(method, code.name)
        await context.abort(code, message)

    return grpc.stream_unary_rpc_method_handler(refuse)


def unknown_method_handler(refused: Refused) -> grpc.GenericRpcHandler:
    """A generic handler (registered last) answering UNIMPLEMENTED for any other method, counted.

    grpc's own answer ("Method not found!") was given where no count could see it.
    """

    class _Unknown(grpc.GenericRpcHandler):
        def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            return _refusing_handler(
                grpc.StatusCode.UNIMPLEMENTED,
                "no such method on this server (its reflection service lists what it serves)",
                UNKNOWN_METHOD,
                refused,
            )

    return _Unknown()
