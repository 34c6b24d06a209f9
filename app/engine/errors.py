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


class ContextLengthExceededError(InvalidRequestError):
    """The prompt, or the prompt plus the tokens asked for, does not fit the context window.

    Carries the numbers so the HTTP layer can say it in each API's words (OpenAI's
    "This model's maximum context length is ...", TGI's "`inputs` tokens + `max_new_tokens`
    ..."), which clients such as litellm match to tell an overflow from other bad input."""

    def __init__(
        self,
        field: str,
        message: str,
        *,
        max_model_len: int,
        prompt_tokens: int,
        max_tokens: int | None,
        prompt_at_least: bool = False,
    ) -> None:
        super().__init__(field, message)
        self.max_model_len = max_model_len
        self.prompt_tokens = prompt_tokens  # a lower bound when prompt_at_least
        self.max_tokens = max_tokens  # None: the prompt alone does not fit
        self.prompt_at_least = prompt_at_least


class EngineDeadError(EngineError):
    """The engine stopped (shut down or crashed); in-flight requests end with this."""


class OverloadedError(EngineError):
    """The waiting queue is full; try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineNotReadyError(EngineError):
    """The engine is starting, restarting after a crash, or draining for shutdown."""
