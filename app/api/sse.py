"""Server-sent events: the one place that frames events (app/api/event_stream.py writes them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

DONE = b"data: [DONE]\n\n"
# A comment line: every SSE parser skips it, and it keeps idle proxies from closing the stream.
KEEP_ALIVE = b": keep-alive\n\n"

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx would otherwise buffer the whole answer
}


def event(payload: BaseModel) -> bytes:
    """One `data:` event from a response model: compact JSON on one line, UTF-8 as is (no \\u
    escapes; JSON escapes every line break inside strings)."""
    return b"data: " + payload.__pydantic_serializer__.to_json(payload) + b"\n\n"


# One event as OpenAPI 3.0/3.1 describe an event stream: the media type's schema is that of each
# event (field by field), which is how schemathesis and other validators read it.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "data": {"type": "string", "description": "One JSON object, or [DONE]"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}


def sse_openapi(description: str, model: type[Any] | None = None) -> dict[int | str, Any]:
    """OpenAPI `responses` entry for a route that answers JSON, or an event stream when asked."""
    entry: dict[str, Any] = {
        "description": description,
        "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
    }
    if model is not None:
        entry["model"] = model
    return {200: entry}
