"""The OpenAI stream skeleton both OpenAI routes share.

    data: {chunk}        one per delta that has something to say; the last of a choice
                         carries its finish_reason (and a non-standard "timings")
    data: {usage chunk}  choices: [], when stream_options.include_usage
    data: [DONE]

A failure after the headers went out ends the stream with `data: {"error": {...}}` and then
`data: [DONE]`, so a client never mistakes a broken answer for a short one.

Every event, and the non-streamed answer, is built into its response model (CompletionChunk or
ChatCompletionChunk, ErrorResponse; CompletionResponse or ChatCompletionResponse) before it is
written: see app/api/responses.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastapi.responses import Response
from pydantic import BaseModel

from app.api.choices import ChoicePlan, usage
from app.api.errors import to_api_error
from app.api.event_stream import StreamEvents
from app.api.request_context import note_error
from app.api.responses import build, json_response
from app.api.sse import DONE, event
from app.api.timing import combine, server_timing, timings_ms
from app.engine.protocol import GenerationDelta, GenerationResult

logger = logging.getLogger(__name__)

# A chunk for one choice's delta: a model, or an event already written (EventTemplate).
ChunkBuilder = Callable[[int, GenerationDelta], BaseModel | bytes | None]


class OpenAIEvents(StreamEvents):
    """OpenAI's stream: a chunk per delta that has something to say, the usage chunk when asked,
    [DONE]; an error event then [DONE] for a failure. With --stream-interval above 1, a
    choice's deltas written together go out as one chunk."""

    merges_deltas = True

    def __init__(
        self,
        *,
        build_chunk: ChunkBuilder,
        prelude: Sequence[BaseModel] = (),
        usage_chunk: Callable[[list[int], list[int]], BaseModel] | None = None,
        num_choices: int,
        response_id: str,
    ) -> None:
        self._build_chunk = build_chunk
        self._prelude = prelude
        self._usage_chunk = usage_chunk
        self._response_id = response_id
        self._outputs = [0] * num_choices  # tokens generated per choice, for the usage chunk
        self._cached = [0] * num_choices  # prompt tokens each choice took from the prefix cache

    def opening(self) -> bytes:
        return b"".join(event(chunk) for chunk in self._prelude)

    def delta(self, index: int, delta: GenerationDelta) -> bytes:
        self._outputs[index] = delta.num_output_tokens
        self._cached[index] = delta.num_cached_tokens
        built = self._build_chunk(index, delta)
        if built is None:
            return b""
        return built if isinstance(built, bytes) else event(built)

    def end(self) -> bytes:
        if self._usage_chunk is None:
            return DONE
        return event(self._usage_chunk(self._outputs, self._cached)) + DONE

    def error(self, exc: Exception) -> bytes:
        note_error(exc)
        error = to_api_error(exc)
        if error.status_code >= 500:
            logger.warning("stream %s failed mid-way: %s", self._response_id, exc, exc_info=exc)
        return event(error.body()) + DONE


def base_chunk(response_id: str, kind: str, created: int, model: str) -> dict[str, Any]:
    return {"id": response_id, "object": kind, "created": created, "model": model}


def openai_response(
    model: type[BaseModel],
    head: dict[str, Any],
    choices: list[dict[str, Any]],
    plans: Sequence[ChoicePlan],
    results: Sequence[GenerationResult],
) -> Response:
    """A non-streamed OpenAI answer (a `model`): choices, usage, and the timing breakdown in the
    body and the Server-Timing header."""
    timings = combine([result.timings for result in results])
    content: dict[str, Any] = {
        **head,
        "choices": choices,
        "usage": usage(
            plans,
            [result.num_output_tokens for result in results],
            [result.num_cached_tokens for result in results],
        ),
    }
    if timings is not None:
        content["timings"] = timings_ms(timings)
    return json_response(build(model, content), headers=server_timing(timings))
