"""What the HTTP layer knows about the generation request being served, for metrics, the request
log and tracing (app/api/telemetry.py reads it when the request ends).

The context lives in a ContextVar set by TelemetryMiddleware; routes, error handlers and the
stream helpers (all running inside that middleware) add to it through the functions below, which
do nothing outside a tracked request.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from fastapi.exceptions import RequestValidationError

from app.engine.errors import (
    EngineDeadError,
    EngineNotReadyError,
    InvalidRequestError,
    OverloadedError,
)
from app.engine.protocol import Outcome, RequestRecord


@dataclass
class RequestContext:
    request_id: str  # the X-Request-Id
    method: str
    path: str
    pending: dict[str, RequestContext]  # engine request id -> context, shared by all requests
    span: Any = None
    # time.monotonic() when the middleware first saw the request (its headers parsed, its body
    # not yet read): the log line's total, and where the engine's timings of its requests start
    # (request_arrival).
    started: float = field(default_factory=time.monotonic)
    engine_ids: list[str] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)
    error: Outcome | None = None  # a failure the HTTP layer saw (see app/api/telemetry.py)
    prompt_tokens: list[int] | None = None  # per prompt, as tokenized
    prompt: object = None  # only when log_prompts is on


_current: ContextVar[RequestContext | None] = ContextVar("gpt2_request_context", default=None)


def current() -> RequestContext | None:
    return _current.get()


def track_engine_request(engine_request_id: str) -> None:
    """The engine request about to start belongs to the current HTTP request."""
    ctx = _current.get()
    if ctx is not None:
        ctx.engine_ids.append(engine_request_id)
        ctx.pending[engine_request_id] = ctx


def request_arrival() -> float | None:
    """time.monotonic() when the current HTTP request arrived; None outside a tracked one."""
    ctx = _current.get()
    return None if ctx is None else ctx.started


def note_error(exc: BaseException) -> None:
    """An error ended (or is about to end) the current request; the first one is its reason."""
    ctx = _current.get()
    if ctx is not None and ctx.error is None:
        ctx.error = failure_reason(exc)


def note_prompt(prompt_tokens: Sequence[int], prompt: object | None) -> None:
    ctx = _current.get()
    if ctx is not None:
        ctx.prompt_tokens = list(prompt_tokens)
        ctx.prompt = prompt


def failure_reason(exc: BaseException) -> Outcome | None:
    """The failure an exception means for the request that raised it (None: not a failure of
    the request, e.g. a 401)."""
    if isinstance(exc, InvalidRequestError | RequestValidationError):
        return Outcome.VALIDATION
    if isinstance(exc, OverloadedError):
        return Outcome.OVERLOADED
    if isinstance(exc, EngineNotReadyError):
        return Outcome.UNAVAILABLE
    if isinstance(exc, EngineDeadError):
        return Outcome.WORKER_LOST
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return reason_for_status(status)
    return Outcome.INTERNAL


def reason_for_status(status: int) -> Outcome | None:
    """A failure reason from an HTTP status alone (499, the caller leaving, is not one: the
    engine reports those requests as disconnected)."""
    if status in (400, 404, 408, 413, 415, 422):
        return Outcome.VALIDATION
    if status == 429:
        return Outcome.OVERLOADED
    if status == 503:
        return Outcome.UNAVAILABLE
    if status >= 500:
        return Outcome.INTERNAL
    return None


def bind(ctx: RequestContext | None) -> Any:
    return _current.set(ctx)


def unbind(token: Any) -> None:
    _current.reset(token)
