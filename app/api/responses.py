"""Answers from response models: plain data in, a validated model, compact UTF-8 JSON out.

The routes assemble an answer or a stream chunk as plain dicts and `build` it into its
response model (app/api/schemas): one pass of pydantic-core validates the whole tree, and an
undeclared key or a missing one is an error (see ResponseModel). That costs less than calling
a constructor per nested object, which matters once per streamed token. pydantic's serializer
then writes what JSONResponse and the SSE events wrote before: no spaces, non-ASCII as is,
keys in the model's field order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

import pydantic_core
from fastapi.responses import Response
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def build(model: type[M], data: Mapping[str, Any]) -> M:
    """`model` from plain data (nested dicts and lists, or model instances), validated."""
    return cast(M, model.__pydantic_validator__.validate_python(data))


def to_json(model: BaseModel) -> bytes:
    return model.__pydantic_serializer__.to_json(model)


def json_response(
    body: BaseModel | bytes, *, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON answer from a response model (or from bytes a model's serializer wrote)."""
    content = body if isinstance(body, bytes) else to_json(body)
    return Response(
        content, status_code=status_code, headers=headers, media_type="application/json"
    )


_MARKER = "\x00text\x00"


class TextEventTemplate:
    """The one stream event that goes out per token, written from a template.

    Most events of a stream say only "this choice has new text". The response model writes
    such a chunk once, with a marker for the text; each event is then the bytes around the
    marker with the new text's JSON (pydantic-core's string encoding, as the model's) in
    between: byte for byte what building the chunk through the model writes, for a fraction of
    the CPU (tests/api/test_response_models.py holds the two equal)."""

    def __init__(self, model: type[BaseModel], chunk: Mapping[str, Any]) -> None:
        data = b"data: " + to_json(build(model, chunk)) + b"\n\n"
        head, sep, tail = data.partition(pydantic_core.to_json(_MARKER))
        if not sep or _MARKER.encode() in tail:
            raise ValueError("the chunk must hold the text marker exactly once")
        self._head, self._tail = head, tail

    @staticmethod
    def chunk_text() -> str:
        """What to put where the text goes in the chunk the template is made from."""
        return _MARKER

    def __call__(self, text: str) -> bytes:
        return self._head + pydantic_core.to_json(text) + self._tail
