"""Every method handler of a ``grpc.aio`` server wrapped once, where every RPC is admitted, counted and timed.

:class:`InstrumentedServer` wraps each method handler when it is registered. The wrapper

- admits the call (:mod:`service.rpc.admission`: draining, bearer token);
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
from service.rpc.admission import OPEN_PREFIX, Admission, ServerCalls
from service.rpc.decoding import Undecodable, check_decoded, lenient, request_type_name
from service.rpc.status import abort, outcome

log = logging.getLogger(__name__)


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
        self.calls = ServerCalls()

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
            admission = Admission(
                self.calls, self._auth, is_open, self._metrics.auth_failures, self.client_errors
            )
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
    behavior: Callable[..., Any], series: RpcSeries, client_errors: RateLimitedLog, admission: Admission
) -> Any:
    in_flight, duration = series.in_flight, series.duration
    perf_counter = time.perf_counter
    calls = admission.calls

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = calls.last_start = perf_counter()
        in_flight.inc()
        calls.active += 1
        cancelled = False
        try:
            admission.check(context)
            check_decoded(request, series.method, client_errors)
            return await behavior(request, context)
        except AbortError:
            raise
        except BaseException as exc:
            if not isinstance(exc, Exception):  # asyncio.CancelledError: the client went away
                cancelled = True
                raise
            await abort(context, exc, series.method)
        finally:
            calls.active -= 1
            in_flight.dec()
            duration.observe(perf_counter() - start)
            series.finished(outcome(context, cancelled))

    return handle


def _client_streaming(
    behavior: Callable[..., Any], series: RpcSeries, client_errors: RateLimitedLog, admission: Admission
) -> Any:
    unary = _unary(behavior, series, client_errors, admission)

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
        return _unary(behavior, series, client_errors, admission)
    in_flight, duration = series.in_flight, series.duration
    perf_counter = time.perf_counter
    calls = admission.calls

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started: collections.deque[float] = collections.deque()
        calls.last_start = perf_counter()
        in_flight.inc()
        calls.active += 1
        cancelled = False
        try:
            admission.check(context)
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
