"""One error hierarchy for aeguard: domain errors that each transport maps to its own codes.

The core (artifact, scorer, model store, batch job) raises these; it never knows about gRPC.
The gRPC layer maps each class to a status code in exactly one table; the CLI maps them to
an exit code and a one-line message. Messages are written for a person: they name the field,
the sample or the file, and say what to do.
"""

from __future__ import annotations


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


class DataError(AeguardError):
    """A data file cannot be used for training, evaluation or batch scoring."""
