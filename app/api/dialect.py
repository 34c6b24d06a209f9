"""Which API a request speaks, and what its caller calls the fields the engine names.

The OpenAI routes answer bad input as OpenAI (and vLLM) do, with 400; TGI's routes (POST /,
/generate, /generate_stream) as TGI does, with 422. Everything else (/tokenize, /v1/models, ...)
speaks OpenAI's dialect, as vLLM's extras do.

The engine names a request's fields as OpenAI's completions API does (`prompt`, `max_tokens`).
A route whose callers say otherwise (chat's `messages` and `max_completion_tokens`, TGI's
`inputs` and `parameters.max_new_tokens`) records its names here, so that an error the engine
raises names the field the caller sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from starlette.requests import Request

Dialect = Literal["openai", "tgi"]

TGI_PATHS = frozenset({"/", "/generate", "/generate_stream"})


def dialect_of(request: Request) -> Dialect:
    return "tgi" if request.url.path in TGI_PATHS else "openai"


def use_field_names(request: Request, names: Mapping[str, str]) -> None:
    """Engine field name -> the caller's, for the errors of this request."""
    request.state.field_names = dict(names)


def field_names(request: Request) -> Mapping[str, str]:
    names: Mapping[str, str] = getattr(request.state, "field_names", {})
    return names
