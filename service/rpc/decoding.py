"""Lenient request decoding: bytes that are not a valid message become INVALID_ARGUMENT, not INTERNAL.

grpcio answers a request it cannot deserialize with INTERNAL "Exception deserializing request!" and
logs a traceback per call. Wrapped deserializers (:func:`lenient`) hand the method an
:class:`Undecodable` instead, and :func:`check_decoded` raises it as an
:class:`~service.errors.InvalidInputError` naming the message type ("request is not a valid
aeguard.v1.ScoreRequest: ...").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from service import errors
from service.errors import truncate
from service.logs import RateLimitedLog


class Undecodable:
    """A request whose bytes did not parse as the method's request message."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def error(self) -> errors.InvalidInputError:
        return errors.InvalidInputError(self.message)


def lenient(deserializer: Callable[[bytes], Any] | None, type_name: str) -> Callable[[bytes], Any] | None:
    """``deserializer``, returning an :class:`Undecodable` where it would raise."""
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


def request_type_name(handler: grpc.RpcMethodHandler) -> str:
    """The full name of a method's request message (``aeguard.v1.ScoreRequest``)."""
    # Generated handlers pass `Message.FromString`; its __self__ is the message class.
    cls = getattr(handler.request_deserializer, "__self__", None)
    descriptor = getattr(cls, "DESCRIPTOR", None)
    return descriptor.full_name if descriptor is not None else "request message"


def check_decoded(request: Any, method: str, client_errors: RateLimitedLog) -> None:
    """Raise InvalidInputError for an :class:`Undecodable` request (with a rate-limited warning)."""
    if isinstance(request, Undecodable):
        client_errors.warning("undecodable", "undecodable request", method=method)
        raise request.error()
