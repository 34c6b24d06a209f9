"""Building blocks shared by the OpenAI and TGI schemas."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from app.api.schemas.known_fields import KnownFieldsOnly

MAX_STOP_SEQUENCES = 4
MAX_N = 16
SEED_LIMIT = 2**63  # the engine's seeds are in [0, 2**63)


class StrictModel(BaseModel):
    """Request bodies: "1" is not a number and 1.5 is not an integer (an int is a valid float).

    Top-level bodies (RequestBody) and TGI's `parameters` refuse fields they do not know
    (KnownFieldsOnly); parts nested deeper (a chat message's extra keys) are ignored. Fields that
    would change the answer and are not supported are declared and rejected explicitly.
    """

    model_config = ConfigDict(strict=True, extra="ignore")


# JSON may escape half of a UTF-16 pair ("\\ud800"); Python then holds a string that cannot be
# encoded as UTF-8, and the tokenizer (or the answer's encoding) would fail with a 500.
_SURROGATE = re.compile("[\ud800-\udfff]")


class RequestBody(KnownFieldsOnly, StrictModel):
    """A top-level request body: refuses unknown fields, and strings that are not valid
    Unicode."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        path = _find_surrogate(data, ())
        if path is not None:
            raise PydanticCustomError(
                "unicode",
                "contains a lone UTF-16 surrogate, which is not valid Unicode",
                {"field": ".".join(path) or "body"},
            )
        return data


def _find_surrogate(value: Any, path: tuple[str, ...]) -> tuple[str, ...] | None:
    if isinstance(value, str):
        return path if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find_surrogate(key, path) or _find_surrogate(item, (*path, str(key)))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _find_surrogate(item, (*path, str(index)))
            if found is not None:
                return found
    return None


def _integral(value: Any) -> Any:
    # JSON Schema counts 2.0 as an integer, and so do JSON libraries that write every number
    # as a float; 2.5, "2" and true stay errors.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def only(allowed: Any, message: str) -> Any:
    """A before-validator for a field that takes one value (or null): anything else is a 422 with
    `message`. Checks the type too, since pydantic's Literal lets 0 pass for False, True for 1."""

    def check(value: Any) -> Any:
        if value is None or (type(value) is type(allowed) and value == allowed):
            return value
        raise PydanticCustomError("unsupported", message)

    return check


# Limits go before the validator: that order keeps them in the JSON schema as minimum/maximum.
Integral = BeforeValidator(_integral)
Int = Annotated[int, Integral]
PositiveInt = Annotated[int, Field(ge=1), Integral]
NonNegativeInt = Annotated[int, Field(ge=0), Integral]
StopString = Annotated[str, Field(min_length=1)]
StopList = Annotated[list[StopString], Field(max_length=MAX_STOP_SEQUENCES)]
# Seeds stop at 2**53 - 1: larger integers do not survive JSON in many clients (JavaScript's
# numbers, and validators that compare as floats), so a seed could not be replayed exactly.
MAX_SEED = 2**53 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED), Integral]
# A token id's upper bound (the vocab size) is known once the model is loaded: the routes check
# it, and app.main writes it into the OpenAPI schema where this marker is.
TOKEN_ID_MARKER = "x-gpt2-token-id"
TokenId = Annotated[int, Field(ge=0, json_schema_extra={TOKEN_ID_MARKER: True}), Integral]
Bias = Annotated[float, Field(ge=-100, le=100)]
BiasKey = Annotated[str, Field(pattern=r"^[0-9]+$", description="A token id")]


class ResponseModel(BaseModel):
    """What the server sends: every JSON answer and stream event is built from one of these.

    Lax like any pydantic model (a tuple is a list, an int a float): only our own values go in.
    Unknown fields are an error, so an answer cannot carry a key its model does not declare.
    Fields are sent in declaration order; a field made with `omitted_if_none()` is left out of
    the JSON while it is None, every other field is always sent (None as null).
    """

    model_config = ConfigDict(extra="forbid")


def _is_none(value: object) -> bool:
    return value is None


def omitted_if_none(description: str | None = None) -> Any:
    """A field that is absent from the JSON when None (non-standard extras such as "timings",
    or parts sent only when asked for), rather than sent as null."""
    return Field(default=None, exclude_if=_is_none, description=description)


class Timings(ResponseModel):
    """Non-standard: where the time went, in milliseconds."""

    queue_ms: float
    ttft_ms: float
    decode_ms: float
    total_ms: float
    mean_itl_ms: float
    max_itl_ms: float


# OpenAI's error "type", and TGI's "error_type" (huggingface_hub maps it to its exceptions).
ErrorKind = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "rate_limit_error",
    "server_error",
    "service_unavailable_error",
]
ErrorType = Literal[
    "validation",
    "authentication",
    "not_found",
    "overloaded",
    "internal",
    "unavailable",
    "generation",  # an error event in the middle of a TGI stream
]


class ErrorObject(ResponseModel):
    message: str
    type: ErrorKind
    param: str | None = Field(description="The request field at fault, when one is")
    code: str | int = Field(
        description=(
            "OpenAI's error code where it has one (model_not_found, context_length_exceeded), "
            "otherwise the HTTP status"
        )
    )


class ErrorResponse(ResponseModel):
    """The one error envelope (see app/api/errors.py); also the event that ends a stream that
    failed after its headers went out."""

    error: ErrorObject
    error_type: ErrorType


def _error_responses(bad_input: int) -> dict[int | str, dict[str, object]]:
    return {
        status: {"model": ErrorResponse, "description": description}
        for status, description in (
            (bad_input, "Invalid request: the message names the field and the limit"),
            (401, "Missing or invalid API key"),
            (404, "The requested model is not served here"),
            (413, "Request body too large"),
            (429, "Overloaded: retry after the Retry-After header's seconds"),
            (503, "Not ready, draining, or the engine was lost"),
        )
    }


# Bad input is 400 on the OpenAI routes (as OpenAI and vLLM answer) and 422 on TGI's.
ERROR_RESPONSES = _error_responses(400)
TGI_ERROR_RESPONSES = _error_responses(422)
