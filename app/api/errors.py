"""One error envelope for every route, and the one mapping from exceptions to status codes.

The envelope serves both client families:

    {"error": {"message": str, "type": str, "param": str | null, "code": str | int},
     "error_type": str}

- "error" is OpenAI's object; the `openai` client reads error.message from it, also when it
  arrives as an event in the middle of a stream. Its "code" is OpenAI's code where OpenAI has
  one for the case (`model_not_found`, `context_length_exceeded`), otherwise the HTTP status
  (as vLLM sends it).
- "error_type" uses TGI's words (validation, overloaded, ...); huggingface_hub turns it into its
  typed exceptions (ValidationError, OverloadedError, ...): from TGI's answers, and from the
  error event of a /v1/chat/completions stream, which its chat_completion reads the same way.
  So the OpenAI routes keep it too, a documented extra key that OpenAI's clients ignore.
- The X-Error-Message header carries the message as plain text, which huggingface_hub puts in
  the text of the HTTP errors it raises.

Status codes: bad input is 400 on the OpenAI routes (OpenAI's and vLLM's) and 422 on TGI's
(app/api/dialect.py); 401 bad key, 404 unknown route or model, 408 request too slow to arrive,
413 body too large, 429 overloaded (with Retry-After), 503 not ready / draining / worker lost,
500 a bug of ours. Inside the server, bad input is raised as 422; the dialect of the route
decides the status that goes out.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.context_errors import CONTEXT_LENGTH_EXCEEDED, context_message
from app.api.dialect import Dialect, dialect_of, field_names
from app.api.request_context import note_error
from app.api.responses import json_response
from app.api.schemas.common import ErrorKind, ErrorObject, ErrorResponse, ErrorType
from app.api.schemas.known_fields import UNRECOGNIZED
from app.engine.errors import (
    ContextLengthExceededError,
    EngineDeadError,
    EngineNotReadyError,
    InvalidRequestError,
    OverloadedError,
)

logger = logging.getLogger(__name__)

# status -> (OpenAI "type", TGI "error_type"): the wire vocabularies of the two APIs.
_KINDS: dict[int, tuple[ErrorKind, ErrorType]] = {
    400: ("invalid_request_error", "validation"),
    401: ("authentication_error", "authentication"),
    403: ("permission_error", "authentication"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "validation"),
    408: ("invalid_request_error", "validation"),
    413: ("invalid_request_error", "validation"),
    415: ("invalid_request_error", "validation"),
    422: ("invalid_request_error", "validation"),
    429: ("rate_limit_error", "overloaded"),
    500: ("server_error", "internal"),
    503: ("service_unavailable_error", "unavailable"),
}
_MAX_LISTED_ERRORS = 5
BAD_INPUT = 422  # bad input inside the server; OpenAI's routes send it as 400


class APIError(Exception):
    """An error with its status, ready to become the envelope (raised by routes and helpers)."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: ErrorKind | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code  # OpenAI's error code, where it has one; else the status goes out
        self.kind = kind  # OpenAI's error type, when not the status's
        self.headers = dict(headers or {})

    def status(self, dialect: Dialect) -> int:
        """The status that goes out: bad input is 400 in OpenAI's dialect, 422 in TGI's."""
        if self.status_code == BAD_INPUT and dialect == "openai":
            return 400
        return self.status_code

    def body(
        self, dialect: Dialect = "openai", error_type: ErrorType | None = None
    ) -> ErrorResponse:
        """The envelope; `error_type` overrides the status's (a TGI stream's "generation")."""
        kind, default_type = _KINDS.get(
            self.status_code, _KINDS[500] if self.status_code >= 500 else _KINDS[400]
        )
        return ErrorResponse(
            error=ErrorObject(
                message=self.message,
                type=self.kind or kind,
                param=self.param,
                code=self.code or self.status(dialect),
            ),
            error_type=error_type or default_type,
        )

    def response(self, dialect: Dialect = "openai") -> Response:
        headers = {"X-Error-Message": _header_safe(self.message), **self.headers}
        status = self.status(dialect)
        return json_response(self.body(dialect), status_code=status, headers=headers)


def to_api_error(
    exc: BaseException, dialect: Dialect = "openai", names: Mapping[str, str] | None = None
) -> APIError:
    """Map anything a route can raise to its APIError, in the route's dialect; `names` maps the
    engine's field names to the caller's (app/api/dialect.py). Bad input never becomes a 5xx."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextLengthExceededError):
        field = (names or {}).get(exc.field, exc.field)
        code = CONTEXT_LENGTH_EXCEEDED if dialect == "openai" else None
        return APIError(BAD_INPUT, context_message(exc, dialect), param=field, code=code)
    if isinstance(exc, InvalidRequestError):
        field = (names or {}).get(exc.field, exc.field)
        return APIError(BAD_INPUT, f"{field}: {exc.message}", param=field)
    if isinstance(exc, OverloadedError):
        retry_after = max(1, int(exc.retry_after))
        return APIError(429, str(exc), headers={"Retry-After": str(retry_after)})
    if isinstance(exc, EngineNotReadyError):
        return APIError(503, str(exc) or "the engine is not ready; retry shortly")
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc) or "the engine stopped while serving the request")
    if isinstance(exc, RequestValidationError):
        message, param = format_validation_errors(exc.errors())
        return APIError(BAD_INPUT, message, param=param)
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI could not decode the body: bad input, as all else
            return APIError(BAD_INPUT, f"body: {exc.detail}", param="body")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return APIError(exc.status_code, detail, headers=exc.headers)
    return APIError(500, "internal server error")


def format_validation_errors(errors: Sequence[Any]) -> tuple[str, str | None]:
    """pydantic errors -> one message naming each field and its limit, and the first field.

    Fields the server does not know come first, in OpenAI's words ("Unrecognized request
    argument supplied: max_token"), as a client that misspelt a name needs to hear that."""
    unrecognized = [
        name
        for error in errors
        if error.get("type") == UNRECOGNIZED
        for name in _unrecognized_names(error)
    ]
    by_field: dict[str, list[Mapping[str, Any]]] = {}
    for error in errors:
        if error.get("type") != UNRECOGNIZED:
            by_field.setdefault(_field_of(error), []).append(error)
    parts: list[str] = []
    if unrecognized:
        plural = "s" if len(unrecognized) > 1 else ""
        parts.append(f"Unrecognized request argument{plural} supplied: {', '.join(unrecognized)}")
    for field, field_errors in list(by_field.items())[:_MAX_LISTED_ERRORS]:
        # A union reports every branch; a branch whose type did not even match says less than
        # one that matched and broke a limit ("at most 4 items"), so keep the latter.
        specific = [e for e in field_errors if not str(e.get("type", "")).endswith("_type")]
        chosen = specific or field_errors
        messages = " or ".join(dict.fromkeys(_describe(e) for e in chosen))
        parts.append(f"{field}: {messages}{_shown_input(chosen[0])}")
    if len(by_field) > _MAX_LISTED_ERRORS:
        parts.append(f"(and {len(by_field) - _MAX_LISTED_ERRORS} more fields)")
    first = unrecognized[0] if unrecognized else next(iter(by_field), None)
    return "; ".join(parts) or "invalid request", first


def _unrecognized_names(error: Mapping[str, Any]) -> list[str]:
    # The check runs on each request model, nested ones too: name a nested field by its path.
    prefix = _field_path(error["loc"])
    names = (error.get("ctx") or {}).get("names", [])
    return [name if prefix == "body" else f"{prefix}.{name}" for name in names]


def _field_of(error: Mapping[str, Any]) -> str:
    kind = error.get("type")
    if kind == "json_invalid":
        return "body"
    if kind == "unicode":  # found by a whole-body check, which names the field itself
        return str((error.get("ctx") or {}).get("field", "body"))
    return _field_path(error["loc"])


# Union branches appear in pydantic locations as type names: "str", "list[int]",
# "constrained-str", "function-wrap[...]". Field names here never look like that.
_BRANCH_TAG = re.compile(r"^(str|int|float|bool|none|dict|list)$|[\[\-]")


def _field_path(loc: Sequence[Any]) -> str:
    # FastAPI prefixes body fields with "body"; the caller knows the field by its own name.
    parts = [
        str(p)
        for i, p in enumerate(loc)
        if not (i == 0 and p == "body") and not (isinstance(p, str) and _BRANCH_TAG.search(p))
    ]
    return ".".join(parts) if parts else "body"


def _describe(error: Mapping[str, Any]) -> str:
    kind = error.get("type", "")
    msg = str(error.get("msg", "invalid value"))
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "")
        return f"the body is not valid JSON ({reason})" if reason else "the body is not valid JSON"
    if kind == "missing":
        return "field required"
    if kind == "extra_forbidden":
        return "unknown field"
    return msg


def _shown_input(error: Mapping[str, Any]) -> str:
    if error.get("type") in ("missing", "json_invalid", "unicode"):
        return ""
    value = error.get("input")
    if isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= 40):
        return f", got {value!r}"
    return ""


def _header_safe(message: str) -> str:
    # Header values must be single-line printable text, or h11 refuses to send the answer and
    # drops the connection (a field name the caller sent may hold any character); the body
    # keeps the full message.
    text = " ".join(message.split())[:300]
    return "".join(c if " " <= c <= "~" else "?" for c in text)


async def _handle(request: Request, exc: Exception) -> Response:
    note_error(exc)  # the failure reason metrics count this request under
    dialect = dialect_of(request)
    error = to_api_error(exc, dialect, field_names(request))
    if error.status_code >= 500 and not isinstance(
        exc, EngineNotReadyError | EngineDeadError | APIError
    ):
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error.response(dialect)


def install_error_handlers(app: FastAPI) -> None:
    for exc_type in (
        APIError,
        RequestValidationError,
        StarletteHTTPException,
        InvalidRequestError,
        OverloadedError,
        EngineNotReadyError,
        EngineDeadError,
        Exception,
    ):
        app.add_exception_handler(exc_type, _handle)
