"""Errors the engine raises to its callers. Each names the field and the limit."""

from __future__ import annotations


class EngineError(Exception):
    """Base class for errors reported to a caller."""


class InvalidRequestError(EngineError, ValueError):
    """The request cannot be served as asked; nothing was scheduled."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class EngineDeadError(EngineError):
    """The engine stopped (shut down or crashed); in-flight requests end with this."""


class OverloadedError(EngineError):
    """The waiting queue is full; try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineNotReadyError(EngineError):
    """The engine is starting, restarting after a crash, or draining for shutdown."""
