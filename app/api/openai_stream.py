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
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi.responses import Response
from pydantic import BaseModel

from app.api.choices import ChoicePlan, usage
from app.api.errors import to_api_error
from app.api.request_context import note_error
from app.api.responses import build, json_response
from app.api.sse import DONE, KEEP_ALIVE, event
from app.api.streams import ChoiceStreams
from app.api.timing import combine, server_timing, timings_ms
from app.engine.protocol import GenerationDelta, GenerationResult

logger = logging.getLogger(__name__)

# A chunk for one choice's delta: a model, or an event already written (TextEventTemplate).
ChunkBuilder = Callable[[int, GenerationDelta], BaseModel | bytes | None]


async def openai_events(
    streams: ChoiceStreams,
    *,
    build_chunk: ChunkBuilder,
    keep_alive_seconds: float,
    prelude: Sequence[BaseModel] = (),
    usage_chunk: Callable[[list[int], list[int]], BaseModel] | None = None,
    num_choices: int,
    response_id: str,
) -> AsyncIterator[bytes]:
    outputs = [0] * num_choices  # tokens generated per choice, for the usage chunk
    cached = [0] * num_choices  # prompt tokens each choice took from the prefix cache
    # Events wait here while more deltas are ready at once, and go out as one write: a reader
    # that keeps up writes each event alone; one that is behind pays per write, not per token.
    ready: list[bytes] = [event(chunk) for chunk in prelude]
    try:
        if ready and not streams.pending:  # no delta yet (still queued): the prelude goes now
            yield b"".join(ready)
            ready.clear()
        async for entry in streams.events(keep_alive_seconds):
            if entry is None:
                ready.append(KEEP_ALIVE)
            else:
                index, delta = entry
                outputs[index] = delta.num_output_tokens
                cached[index] = delta.num_cached_tokens
                built = build_chunk(index, delta)
                if built is not None:
                    ready.append(built if isinstance(built, bytes) else event(built))
            if ready and not streams.pending:
                yield b"".join(ready)
                ready.clear()
        if usage_chunk is not None:
            ready.append(event(usage_chunk(outputs, cached)))
        ready.append(DONE)
        yield b"".join(ready)
    except Exception as exc:
        note_error(exc)
        error = to_api_error(exc)
        if error.status_code >= 500:
            logger.warning("stream %s failed mid-way: %s", response_id, exc, exc_info=exc)
        ready += (event(error.body()), DONE)
        yield b"".join(ready)
    finally:
        await streams.aclose()


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
