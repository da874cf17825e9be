"""The one place domain errors become gRPC status codes, and where every RPC is counted and timed.

:class:`InstrumentedServer` wraps each method handler of a ``grpc.aio`` server once, when it is
registered. The wrapper

- decodes requests leniently: bytes that are not a valid message reach the handler as
  :class:`Undecodable`, and become INVALID_ARGUMENT ("request is not a valid aeguard.v1.ScoreRequest:
  ...") instead of grpcio's INTERNAL "Exception deserializing request!" plus a logged traceback;
- maps :class:`~service.errors.AeguardError` subclasses through :data:`STATUS_FOR` to a status code
  with the error's message, and anything else to INTERNAL with the fixed text ``internal error``
  (the traceback goes to the log);
- counts every outcome, CANCELLED and DEADLINE_EXCEEDED included, and times every call (per message
  for streams).

Clients' mistakes are logged as rate-limited warnings (:class:`RateLimitedLog`), never per call.
"""

from __future__ import annotations

import collections
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc.aio import AbortError

from service import errors
from service.auth import TokenFile
from service.errors import truncate
from service.metrics import Metrics, RpcSeries

log = logging.getLogger(__name__)

#: Domain error -> gRPC status. Subclasses not listed fall back to their nearest listed base.
STATUS_FOR: dict[type[errors.AeguardError], grpc.StatusCode] = {
    errors.InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.DataError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.LimitExceededError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    errors.ModelLoadError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.NotReadyError: grpc.StatusCode.UNAVAILABLE,
    errors.AeguardError: grpc.StatusCode.INTERNAL,
}

INTERNAL_MESSAGE = "internal error"
#: The one answer to a missing or a wrong token: it must not say which.
UNAUTHENTICATED_MESSAGE = "missing or invalid bearer token: send metadata 'authorization: Bearer <token>'"
#: Methods open without a token: probes must reach health whatever the token settings.
OPEN_PREFIX = "/grpc.health.v1.Health/"


def status_for(exc: errors.AeguardError) -> grpc.StatusCode:
    """The status code for a domain error (walks the class hierarchy)."""
    for cls in type(exc).__mro__:
        code = STATUS_FOR.get(cls)  # type: ignore[call-overload]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


class RateLimitedLog:
    """A warning at most every ``interval_s`` seconds per kind, saying how many were not logged."""

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


class Undecodable:
    """A request whose bytes did not parse as the method's request message."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def error(self) -> errors.InvalidInputError:
        return errors.InvalidInputError(self.message)


def _lenient(deserializer: Callable[[bytes], Any] | None, type_name: str) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return Undecodable(
                f"request is not a valid {type_name}: {truncate(str(exc) or type(exc).__name__)}"
            )

    return decode


class InstrumentedServer:
    """Registers services on a ``grpc.aio.Server`` with every method handler wrapped once.

    The generated ``add_*Servicer_to_server(servicer, server)`` functions (ours, health,
    reflection) accept it in place of the server. Wrapping at registration rather than with a
    server interceptor keeps the per-call work to one function call.
    """

    def __init__(self, server: grpc.aio.Server, metrics: Metrics, auth: TokenFile | None = None) -> None:
        self._server = server
        self._metrics = metrics
        self._auth = auth
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        self.client_errors = RateLimitedLog(log)
        #: Calls being handled now (all methods), and when the last one started (perf_counter).
        #: Only the event loop's thread touches them.
        self.active = 0
        self.last_start = 0.0
        #: Set when a drain starts: new calls (but health) are refused with UNAVAILABLE.
        self.draining = False

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_WrappedGeneric(h, self) for h in handlers))

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service, {name: self.wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        )

    def wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The instrumented handler for ``/package.Service/Method`` (one per method)."""
        wrapped = self._wrapped.get(full_method)
        if wrapped is None:
            is_open = full_method.startswith(OPEN_PREFIX)
            guard = _Guard(self, None if is_open else self._auth, is_open)
            wrapped = self._wrapped[full_method] = _wrap(
                self._metrics.rpc(full_method.rsplit("/", 1)[-1]), handler, self.client_errors, guard
            )
        return wrapped


class _WrappedGeneric(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, owner: InstrumentedServer) -> None:
        self._inner = inner
        self._owner = owner

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        return None if handler is None else self._owner.wrap(handler_call_details.method, handler)


class _Guard:
    """Admission for one method: refused while draining (but health), and the token check."""

    def __init__(self, owner: InstrumentedServer, auth: TokenFile | None, is_open: bool) -> None:
        self.owner = owner
        self._auth = auth
        self._is_open = is_open
        self._failures = owner._metrics.auth_failures
        self._client_errors = owner.client_errors

    def check(self, context: grpc.aio.ServicerContext) -> None:
        if self.owner.draining and not self._is_open:
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


def _request_type_name(handler: grpc.RpcMethodHandler) -> str:
    # Generated handlers pass `Message.FromString`; its __self__ is the message class.
    cls = getattr(handler.request_deserializer, "__self__", None)
    descriptor = getattr(cls, "DESCRIPTOR", None)
    return descriptor.full_name if descriptor is not None else "request message"


def _wrap(
    series: RpcSeries, handler: grpc.RpcMethodHandler, client_errors: RateLimitedLog, guard: _Guard
) -> Any:
    handler = handler._replace(
        request_deserializer=_lenient(handler.request_deserializer, _request_type_name(handler))
    )
    if handler.unary_unary:
        return handler._replace(unary_unary=_unary(handler.unary_unary, series, client_errors, guard))
    if handler.unary_stream:
        return handler._replace(
            unary_stream=_streaming(handler.unary_stream, series, False, client_errors, guard)
        )
    if handler.stream_stream:
        return handler._replace(
            stream_stream=_streaming(handler.stream_stream, series, True, client_errors, guard)
        )
    if handler.stream_unary:
        return handler._replace(
            stream_unary=_client_streaming(handler.stream_unary, series, client_errors, guard)
        )
    return handler


async def _abort(
    context: grpc.aio.ServicerContext, exc: BaseException, series: RpcSeries, client_errors: RateLimitedLog
) -> None:
    if isinstance(exc, errors.AeguardError):
        await context.abort(status_for(exc), exc.message)
    log.error("unexpected error in %s", series.method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def _outcome(context: grpc.aio.ServicerContext, cancelled: bool) -> str:
    """The status code name an RPC finished with, as the client sees it."""
    if cancelled or context.cancelled():
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    code = context.code()
    if code is None:
        remaining = context.time_remaining()
        # Finished, but after the client's deadline: the client got DEADLINE_EXCEEDED, not our answer.
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


def _check_decoded(request: Any, series: RpcSeries, client_errors: RateLimitedLog) -> None:
    if isinstance(request, Undecodable):
        client_errors.warning("undecodable", "undecodable request", method=series.method)
        raise request.error()


def _unary(
    behavior: Callable[..., Any], series: RpcSeries, client_errors: RateLimitedLog, guard: _Guard
) -> Any:
    in_flight, duration = series.in_flight, series.duration
    perf_counter = time.perf_counter
    owner = guard.owner

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = owner.last_start = perf_counter()
        in_flight.inc()
        owner.active += 1
        cancelled = False
        try:
            guard.check(context)
            _check_decoded(request, series, client_errors)
            return await behavior(request, context)
        except AbortError:
            raise
        except BaseException as exc:
            if not isinstance(exc, Exception):  # asyncio.CancelledError: the client went away
                cancelled = True
                raise
            await _abort(context, exc, series, client_errors)
        finally:
            owner.active -= 1
            in_flight.dec()
            duration.observe(perf_counter() - start)
            series.finished(_outcome(context, cancelled))

    return handle


def _client_streaming(
    behavior: Callable[..., Any], series: RpcSeries, client_errors: RateLimitedLog, guard: _Guard
) -> Any:
    unary = _unary(behavior, series, client_errors, guard)

    async def handle(request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        return await unary(_checked(request_iterator, series, client_errors), context)

    return handle


async def _checked(
    requests: AsyncIterator[Any], series: RpcSeries, client_errors: RateLimitedLog
) -> AsyncIterator[Any]:
    async for request in requests:
        _check_decoded(request, series, client_errors)
        yield request


def _streaming(
    behavior: Callable[..., Any],
    series: RpcSeries,
    stream_in: bool,
    client_errors: RateLimitedLog,
    guard: _Guard,
) -> Any:
    """Streams: latency is per message, from taking a request to yielding its response.

    An undecodable message in a request stream reaches the servicer as :class:`Undecodable`: our
    ScoreStream answers it with an ``error`` response and goes on, like any other bad request.
    """
    if not inspect.isasyncgenfunction(behavior):
        # A coroutine that answers with context.write (grpc's aio health Watch): timed as a whole.
        return _unary(behavior, series, client_errors, guard)
    in_flight, duration = series.in_flight, series.duration
    perf_counter = time.perf_counter
    owner = guard.owner

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started: collections.deque[float] = collections.deque()
        owner.last_start = perf_counter()
        in_flight.inc()
        owner.active += 1
        cancelled = False
        try:
            guard.check(context)
            if stream_in:
                request = _timed(request, started, series, client_errors)
            else:
                _check_decoded(request, series, client_errors)
                started.append(perf_counter())
            async for response in behavior(request, context):
                yield response
                if started:
                    duration.observe(perf_counter() - started.popleft())
        except AbortError:
            raise
        except BaseException as exc:
            if not isinstance(exc, Exception) or context.cancelled():
                cancelled = True  # the client cancelled or its deadline passed: nobody to answer
                if isinstance(exc, Exception):
                    return
                raise
            await _abort(context, exc, series, client_errors)
        finally:
            owner.active -= 1
            in_flight.dec()
            series.finished(_outcome(context, cancelled))

    return handle


async def _timed(
    requests: AsyncIterator[Any],
    started: collections.deque[float],
    series: RpcSeries,
    client_errors: RateLimitedLog,
) -> AsyncIterator[Any]:
    perf_counter = time.perf_counter
    async for request in requests:
        if isinstance(request, Undecodable):
            client_errors.warning("undecodable", "undecodable request in a stream", method=series.method)
        started.append(perf_counter())
        yield request
