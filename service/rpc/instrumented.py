"""Every method handler of a ``grpc.aio`` server wrapped once, where every RPC is admitted, counted and timed.

:class:`InstrumentedServer` wraps each method handler when it is registered. The wrapper

- admits the call (:mod:`service.rpc.admission`: draining, the limits; the bearer token is checked
  before, by :meth:`InstrumentedServer.auth_interceptor`);
- takes a unary method's request as a client stream (the same on the wire) and reads it itself
  after admission: refusals cost no body, and a call whose body never arrives (expired while it
  waited in grpc's queue, or larger than the message limit) is still seen and counted;
- answers a unary call ready with less than :data:`DEADLINE_MARGIN_S` left with DEADLINE_EXCEEDED,
  so that the client's count and ours agree;
- decodes requests leniently (:mod:`service.rpc.decoding`);
- maps errors to a status code (:mod:`service.rpc.status`);
- counts every outcome, CANCELLED and DEADLINE_EXCEEDED included, and times every call (per message
  for streams).

Clients' mistakes are logged as rate-limited warnings (:class:`~service.logs.RateLimitedLog`), never per call.
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

from service.auth import TokenFile
from service.logs import RateLimitedLog
from service.metrics import Metrics, RpcSeries
from service.rpc.admission import (
    OPEN_PREFIX,
    UNKNOWN_METHOD,
    Admission,
    AuthInterceptor,
    ServerCalls,
    TokenCheck,
    unknown_method_handler,
)
from service.rpc.decoding import Undecodable, check_decoded, lenient, request_type_name
from service.rpc.limits import Limits
from service.rpc.status import abort, outcome

log = logging.getLogger(__name__)

#: A unary answer ready with less time than this left before the deadline is not sent: the call
#: ends DEADLINE_EXCEEDED instead. Otherwise which one the client saw was a race between the answer
#: and its own deadline timer, which no server can count: counting by the time left at the end,
#: 3 of 37 calls were counted DEADLINE_EXCEEDED that the client got OK; counting what was sent, 22
#: of 85 the other way round.
DEADLINE_MARGIN_S = 0.002


class InstrumentedServer:
    """Registers services on a ``grpc.aio.Server`` with every method handler wrapped once.

    The generated ``add_*Servicer_to_server(servicer, server)`` functions (ours, health,
    reflection) accept it in place of the server. Wrapping at registration rather than with a
    server interceptor keeps the per-call work to one function call.
    """

    def __init__(self, metrics: Metrics, auth: TokenFile | None = None, limits: Limits | None = None) -> None:
        #: The server services are added to; set before any is (the server is built after
        #: :meth:`auth_interceptor`, which it needs).
        self.server: grpc.aio.Server | None = None
        self._metrics = metrics
        self._auth = auth
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        self._series: dict[str, RpcSeries] = {}
        self.client_errors = RateLimitedLog(log)
        self.calls = ServerCalls()
        self.limits = limits or Limits(0, 0, 0, metrics.rpc_refusals)

    def _grpc(self) -> grpc.aio.Server:
        if self.server is None:
            raise RuntimeError("InstrumentedServer.server must be set before services are added")
        return self.server

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self._grpc().add_generic_rpc_handlers(tuple(_WrappedGeneric(h, self) for h in handlers))

    def add_unknown_method_handler(self) -> None:
        """Answer methods nobody registered with UNIMPLEMENTED, counted (call after every service)."""
        self._grpc().add_generic_rpc_handlers((unknown_method_handler(self.refused),))

    def auth_interceptor(self) -> AuthInterceptor | None:
        """The token check to run before grpc reads a call's body (None when tokens are off)."""
        if self._auth is None:
            return None
        return AuthInterceptor(
            TokenCheck(self._auth, self._metrics.auth_failures, self.client_errors), self.refused
        )

    def refused(self, full_method: str, code: str) -> None:
        """Count a call answered before any handler ran (the method label bounded to known ones)."""
        name = full_method.rsplit("/", 1)[-1] if full_method in self._wrapped else UNKNOWN_METHOD
        series = self._series.get(name)
        if series is None:
            series = self._series[name] = self._metrics.rpc(name)
        series.finished(code)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self._grpc().add_registered_method_handlers(
            service, {name: self.wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        )

    def wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The instrumented handler for ``/package.Service/Method`` (one per method)."""
        wrapped = self._wrapped.get(full_method)
        if wrapped is None:
            is_open = full_method.startswith(OPEN_PREFIX)
            admission = Admission(self.calls, self.limits, is_open)
            wrapped = self._wrapped[full_method] = _wrap(
                self._metrics.rpc(full_method.rsplit("/", 1)[-1]), handler, self.client_errors, admission
            )
        return wrapped


class _WrappedGeneric(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, owner: InstrumentedServer) -> None:
        self._inner = inner
        self._owner = owner

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        return None if handler is None else self._owner.wrap(handler_call_details.method, handler)


def _wrap(
    series: RpcSeries, handler: grpc.RpcMethodHandler, client_errors: RateLimitedLog, admission: Admission
) -> Any:
    handler = handler._replace(
        request_deserializer=lenient(handler.request_deserializer, request_type_name(handler))
    )
    if handler.unary_unary and not admission.is_open:
        # Taken as a client stream (the same on the wire), so it runs before grpc reads the body.
        return handler._replace(
            request_streaming=True,
            unary_unary=None,
            stream_unary=_unary(handler.unary_unary, series, client_errors, admission, read_body=True),
        )
    if handler.unary_unary:
        return handler._replace(unary_unary=_unary(handler.unary_unary, series, client_errors, admission))
    if handler.unary_stream:
        return handler._replace(
            unary_stream=_streaming(handler.unary_stream, series, False, client_errors, admission)
        )
    if handler.stream_stream:
        return handler._replace(
            stream_stream=_streaming(handler.stream_stream, series, True, client_errors, admission)
        )
    if handler.stream_unary:
        return handler._replace(
            stream_unary=_client_streaming(handler.stream_unary, series, client_errors, admission)
        )
    return handler


def _unary(
    behavior: Callable[..., Any],
    series: RpcSeries,
    client_errors: RateLimitedLog,
    admission: Admission,
    stream_in: bool = False,
    read_body: bool = False,
) -> Any:
    """A unary-response handler; with ``read_body`` it gets the call's requests as a stream and reads
    the one request itself, after admission. ``stream_in``: counted against the streams limit."""
    in_flight, duration = series.in_flight, series.duration
    perf_counter = time.perf_counter
    calls, limits, limited = admission.calls, admission.limits, not admission.is_open

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = calls.last_start = perf_counter()
        in_flight.inc()
        calls.active += 1
        cancelled = entered = False
        held = 0
        try:
            admission.check(context)
            if limited:
                limits.enter(stream_in)
                entered = True
            if read_body:
                request = await _read_one(context, limits)
            held = admission.request_bytes(request)
            check_decoded(request, series.method, client_errors)
            response = await behavior(request, context)
            remaining = context.time_remaining()
            if remaining is not None and remaining < DEADLINE_MARGIN_S:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while handled")
            return response
        except AbortError:
            raise
        except BaseException as exc:
            if not isinstance(exc, Exception):  # asyncio.CancelledError: the client went away
                cancelled = True
                raise
            if context.code() is not None:
                # Our own abort could not be sent (the client is gone): grpc's transport error,
                # logged rate-limited by service.logs; the call is counted with the code it was given.
                raise
            await abort(context, exc, series.method)
        finally:
            if entered:
                limits.leave(stream_in)
            limits.give_bytes(held)
            calls.active -= 1
            in_flight.dec()
            duration.observe(perf_counter() - start)
            series.finished(outcome(context, cancelled))

    return handle


async def _read_one(context: grpc.aio.ServicerContext, limits: Limits) -> Any:
    """The call's one request; end the call with the status the client got when none arrived."""
    request = await context.read()
    if request is not grpc.aio.EOF:
        return request
    if context.time_remaining() == 0:
        # Expired before its body was read (it waited behind a busy loop): the client has its
        # DEADLINE_EXCEEDED already; this makes the count say so.
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the request was read"
        )
    # grpc dropped the body: larger than the message limit (the client got RESOURCE_EXHAUSTED from
    # grpc itself), or the client sent none.
    raise limits.refuse_size()


def _client_streaming(
    behavior: Callable[..., Any], series: RpcSeries, client_errors: RateLimitedLog, admission: Admission
) -> Any:
    unary = _unary(behavior, series, client_errors, admission, stream_in=True)

    async def handle(request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        return await unary(_checked(request_iterator, series, client_errors), context)

    return handle


async def _checked(
    requests: AsyncIterator[Any], series: RpcSeries, client_errors: RateLimitedLog
) -> AsyncIterator[Any]:
    async for request in requests:
        check_decoded(request, series.method, client_errors)
        yield request


def _streaming(
    behavior: Callable[..., Any],
    series: RpcSeries,
    stream_in: bool,
    client_errors: RateLimitedLog,
    admission: Admission,
) -> Any:
    """Streams: latency is per message, from taking a request to yielding its response.

    An undecodable message in a request stream reaches the servicer as :class:`Undecodable`: our
    ScoreStream answers it with an ``error`` response and goes on, like any other bad request.
    """
    if not inspect.isasyncgenfunction(behavior):
        # A coroutine that answers with context.write (grpc's aio health Watch): timed as a whole.
        return _unary(behavior, series, client_errors, admission, stream_in=True)
    in_flight, duration = series.in_flight, series.duration
    perf_counter = time.perf_counter
    calls, limits, limited = admission.calls, admission.limits, not admission.is_open

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started: collections.deque[float] = collections.deque()
        calls.last_start = perf_counter()
        in_flight.inc()
        calls.active += 1
        cancelled = entered = False
        try:
            admission.check(context)
            if limited:
                limits.enter(True)
                entered = True
            if stream_in:
                request = _timed(request, started, series, client_errors)
            else:
                check_decoded(request, series.method, client_errors)
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
            await abort(context, exc, series.method)
        finally:
            if entered:
                limits.leave(True)
            calls.active -= 1
            in_flight.dec()
            series.finished(outcome(context, cancelled))

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
