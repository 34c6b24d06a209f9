"""Answers from response models: plain data in, a validated model, compact UTF-8 JSON out.

The routes assemble an answer or a stream chunk as plain dicts and `build` it into its
response model (app/api/schemas): one pass of pydantic-core validates the whole tree, and an
undeclared key or a missing one is an error (see ResponseModel). That costs less than calling
a constructor per nested object, which matters once per streamed token. pydantic's serializer
then writes what JSONResponse and the SSE events wrote before: no spaces, non-ASCII as is,
keys in the model's field order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


class EventTemplate:
    """A stream event that goes out per token, written from a template.

    Most events of a stream differ from the last only in a few values: the new text (OpenAI's
    chunks), or the token's index, id, text and logprob (TGI's). The response model writes such
    an event once, with a sentinel in each of those places (`EventTemplate.TEXT` for a string,
    `slot_int(k)` for an integer, `SLOT_FLOAT` for a float); each event is then the bytes
    between the sentinels with the values' JSON (pydantic-core's encoding, as the model's) in
    between: byte for byte what building the event through the model writes, for a fraction of
    the CPU (tests/api/test_text_events.py holds the two equal)."""

    TEXT = "\x00text\x00"

    def __init__(
        self, model: type[BaseModel], data: Mapping[str, Any], slots: Sequence[Any]
    ) -> None:
        rendered = b"data: " + to_json(build(model, data)) + b"\n\n"
        marks = [pydantic_core.to_json(sentinel) for sentinel in slots]
        if any(rendered.count(mark) != 1 for mark in marks):
            raise ValueError(f"the event must hold each slot exactly once: {slots!r}")
        starts = [rendered.index(mark) for mark in marks]
        if starts != sorted(starts):
            raise ValueError(f"slots given out of the order the model writes them: {slots!r}")
        ends = [start + len(mark) for start, mark in zip(starts, marks, strict=True)]
        pieces = [rendered[a:b] for a, b in zip([0, *ends], [*starts, len(rendered)], strict=True)]
        self._pieces = pieces
        if len(slots) == 1:  # the per-token case of OpenAI's streams: no join
            self._head, self._tail = pieces

    def text(self, value: str) -> bytes:
        """The event of a one-slot template."""
        return self._head + pydantic_core.to_json(value) + self._tail

    def __call__(self, *values: Any) -> bytes:
        pieces = self._pieces
        out = [pieces[0]]
        for value, piece in zip(values, pieces[1:], strict=True):
            out += (pydantic_core.to_json(value), piece)
        return b"".join(out)


def slot_int(k: int) -> int:
    """The k-th integer sentinel: far from any real index or token id."""
    return 987_654_321_000 + k


SLOT_FLOAT = -1.2345678901234567e-300
