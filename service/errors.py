"""One error hierarchy for aeguard: domain errors that each transport maps to its own codes.

The core (artifact, scorer, model store, batch job) raises these; it never knows about gRPC.
The gRPC layer maps each class to a status code in exactly one table; the CLI maps them to
an exit code and a one-line message. Messages are written for a person: they name the field,
the sample or the file, and say what to do.
"""

from __future__ import annotations

#: Longest piece of a client's strings or bytes ever quoted back in an error message.
MAX_ECHO_CHARS = 100
#: How many names an error message lists at most (e.g. the loaded models on NOT_FOUND).
MAX_LISTED_NAMES = 5


def truncate(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """A client-supplied string cut to ``limit`` characters (with a marker) before it is echoed.

    Control characters (NUL, CR, LF, escape sequences) are shown escaped (``\\x00``, ``\\r``), so an
    echoed name can neither split a log line nor hide what it held.
    """
    cut = text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"
    return cut if cut.isprintable() else "".join(c if c.isprintable() else _escape(c) for c in cut)


def _escape(c: str) -> str:
    return repr(c)[1:-1]


def list_some(names: list[str], limit: int = MAX_LISTED_NAMES) -> str:
    """``a, b, c`` for at most ``limit`` names, then how many more there are."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


class AeguardError(Exception):
    """Base class of every error aeguard raises on purpose.

    Attributes
    ----------
    message:
        The text shown to the caller (client, CLI user). Never a traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInputError(AeguardError):
    """The caller sent data we cannot score: wrong shape, NaN/Inf, unknown feature names."""


class LimitExceededError(AeguardError):
    """The request is well-formed but larger than a configured limit (batch size, message size)."""


class ModelNotFoundError(AeguardError):
    """No model of that name is loaded."""


class ModelLoadError(AeguardError):
    """A model file cannot be used: unreadable, not ONNX, missing or inconsistent metadata."""


class NotReadyError(AeguardError):
    """The service cannot answer yet (no model loaded, shutting down)."""


class UnauthenticatedError(AeguardError):
    """The caller did not prove who it is (no token, or one that is not allowed)."""


class DataError(AeguardError):
    """A data file cannot be used for training, evaluation or batch scoring."""
