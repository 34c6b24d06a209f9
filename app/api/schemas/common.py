"""Building blocks shared by the OpenAI and TGI schemas."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

MAX_STOP_SEQUENCES = 4
MAX_N = 16
SEED_LIMIT = 2**63  # the engine's seeds are in [0, 2**63)


class StrictModel(BaseModel):
    """Request bodies: "1" is not a number and 1.5 is not an integer (an int is a valid float).

    Unknown fields are ignored, as OpenAI's and TGI's clients send fields this server has no
    use for (user, metadata, ...); fields that would change the answer and are not supported
    are declared and rejected explicitly instead.
    """

    model_config = ConfigDict(strict=True, extra="ignore")


# JSON may escape half of a UTF-16 pair ("\\ud800"); Python then holds a string that cannot be
# encoded as UTF-8, and the tokenizer (or the answer's encoding) would fail with a 500.
_SURROGATE = re.compile("[\ud800-\udfff]")


class RequestBody(StrictModel):
    """A top-level request body: also rejects strings that are not valid Unicode."""

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


StopString = Annotated[str, Field(min_length=1)]
StopList = Annotated[list[StopString], Field(max_length=MAX_STOP_SEQUENCES)]
Seed = Annotated[int, Field(ge=0, lt=SEED_LIMIT)]
TokenId = Annotated[int, Field(ge=0)]  # the upper bound (vocab size) is checked in the route
Bias = Annotated[float, Field(ge=-100, le=100)]


class Timings(BaseModel):
    """Non-standard: where the time went, in milliseconds."""

    queue_ms: float
    ttft_ms: float
    decode_ms: float
    total_ms: float
    mean_itl_ms: float
    max_itl_ms: float


class ErrorObject(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    """The one error envelope (see app/api/errors.py)."""

    error: ErrorObject
    error_type: str


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (401, "Missing or invalid API key"),
        (404, "The requested model is not served here"),
        (413, "Request body too large"),
        (422, "Invalid request: the message names the field and the limit"),
        (429, "Overloaded: retry after the Retry-After header's seconds"),
        (503, "Not ready, draining, or the engine was lost"),
    )
}
