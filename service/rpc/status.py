"""The one table from domain errors to gRPC status codes, read both ways.

The server answers an :class:`~service.errors.AeguardError` with :data:`STATUS_FOR`'s code and the
error's message, and anything else with INTERNAL and the fixed text :data:`INTERNAL_MESSAGE` (the
traceback goes to the log). The client turns a status code back into an error class through
:data:`ERROR_FOR`, derived from the same table.
"""

from __future__ import annotations

import logging

import grpc

from service import errors

log = logging.getLogger(__name__)

#: Domain error -> gRPC status. Subclasses not listed fall back to their nearest listed base. Where
#: two classes share a code, the first one listed is what a client raises for it.
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

#: gRPC status -> the domain error a client raises (the inverse of STATUS_FOR; the base class,
#: INTERNAL's entry, is left out: an unmapped code becomes an AeguardError naming the code).
ERROR_FOR: dict[grpc.StatusCode, type[errors.AeguardError]] = {
    code: cls for cls, code in reversed(STATUS_FOR.items()) if cls is not errors.AeguardError
}

INTERNAL_MESSAGE = "internal error"


def status_for(exc: errors.AeguardError) -> grpc.StatusCode:
    """The status code for a domain error (walks the class hierarchy)."""
    for cls in type(exc).__mro__:
        code = STATUS_FOR.get(cls)  # type: ignore[call-overload]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


async def abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    """End the call with ``exc``'s status: its message for a domain error, else a fixed INTERNAL."""
    if isinstance(exc, errors.AeguardError):
        await context.abort(status_for(exc), exc.message)
    log.error("unexpected error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def outcome(context: grpc.aio.ServicerContext, cancelled: bool) -> str:
    """The status code name an RPC finished with, as the client sees it."""
    if cancelled or context.cancelled():
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    code = context.code()
    if code is None:
        remaining = context.time_remaining()
        # Finished, but after the client's deadline: the client got DEADLINE_EXCEEDED, not our answer
        # (a stream whose requests stopped at the deadline). A unary answer with under 2 ms left was
        # already made DEADLINE_EXCEEDED by its handler (service.rpc.instrumented).
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)
