"""POST /v1/chat/completions: messages rendered with the plain template (see app/config.py)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.capacity import check_choices, check_prompt_tokens
from app.api.choices import ChoicePlan, fold, log_request, open_streams, usage
from app.api.deps import engine_of, request_id_of, settings_of
from app.api.dialect import use_field_names
from app.api.event_stream import EventStreamResponse
from app.api.ids import new_id
from app.api.logprobs import chat_logprobs
from app.api.openai_stream import ChunkBuilder, OpenAIEvents, base_chunk, openai_response
from app.api.prompts import (
    check_model,
    encode_text,
    render_chat,
    truncate_prompt,
)
from app.api.responses import EventTemplate, build
from app.api.sampling import openai_params
from app.api.schemas import ERROR_RESPONSES, ChatCompletionChunk, ChatCompletionRequest
from app.api.schemas import ChatCompletionResponse as ChatResponse
from app.api.sse import sse_openapi
from app.api.streams import collect_unless_disconnected
from app.api.timing import timings_ms
from app.engine.client.validation import resolve_max_tokens
from app.engine.engine_client import EngineClient
from app.engine.protocol import GenerationDelta

router = APIRouter(tags=["OpenAI"])

OBJECT = "chat.completion"
CHUNK_OBJECT = "chat.completion.chunk"


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses={
        **ERROR_RESPONSES,
        **sse_openapi("A chat completion; with stream=true, an event stream", ChatResponse),
    },
)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
) -> Response:
    engine, settings, request_id = engine_of(request), settings_of(request), request_id_of(request)
    check_model(body.model, settings)
    use_field_names(request, _field_names(body))
    check_choices(1, body.n, engine, settings)
    info = engine.info
    prompt = render_chat(body.messages, settings)
    truncating = body.truncate_prompt_tokens is not None
    ids = truncate_prompt(
        await encode_text(engine, prompt, truncating=truncating), body.truncate_prompt_tokens
    )
    max_tokens = resolve_max_tokens(body.max_new_tokens, len(ids), info.max_model_len)
    top_n = body.top_logprobs or 0
    plans = [
        ChoicePlan(
            choice,
            0,
            ids,
            openai_params(
                body,
                max_tokens=max_tokens,
                logprobs=top_n if body.logprobs else None,
                choice=choice,
            ),
        )
        for choice in range(body.n)
    ]
    check_prompt_tokens([len(ids)] * body.n, settings)
    response_id = new_id("chatcmpl")
    log_request(response_id, request_id, [ids], body.n, prompt, settings.log_prompts)
    streams = open_streams(engine, plans, response_id)
    created = int(time.time())

    if body.stream:
        await streams.start(settings.keep_alive_seconds, request)
        base = base_chunk(response_id, CHUNK_OBJECT, created, settings.model_name)
        # vLLM's continuous_usage_stats: every chunk carries its choice's usage so far.
        continuous = {"usage": usage(plans[:1], [0], [0])} if body.continuous_usage else {}
        # The role goes first, once per choice, before any text (as OpenAI streams it).
        prelude = [
            build(
                ChatCompletionChunk,
                {
                    **base,
                    "choices": [
                        {
                            "index": choice,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                    **continuous,
                },
            )
            for choice in range(body.n)
        ]
        events = OpenAIEvents(
            build_chunk=_chunk_builder(
                engine, base, body.logprobs, top_n, plans if body.continuous_usage else None
            ),
            prelude=prelude,
            usage_chunk=(
                (
                    lambda outputs, cached: build(
                        ChatCompletionChunk,
                        {**base, "choices": [], "usage": usage(plans, outputs, cached)},
                    )
                )
                if body.include_usage
                else None
            ),
            num_choices=len(plans),
            response_id=response_id,
        )
        return EventStreamResponse(
            streams,
            events,
            keep_alive_seconds=settings.keep_alive_seconds,
            stream_interval=settings.stream_interval,
        )

    results = fold(await collect_unless_disconnected(streams, request))
    choices = [
        {
            "index": plan.index,
            "message": {"role": "assistant", "content": result.text},
            "logprobs": (
                {"content": chat_logprobs(engine, result.logprobs, top_n)}
                if body.logprobs
                else None
            ),
            "finish_reason": result.finish_reason,
        }
        for plan, result in zip(plans, results, strict=True)
    ]
    head = base_chunk(response_id, OBJECT, created, settings.model_name)
    return openai_response(ChatResponse, head, choices, plans, results)


def _field_names(body: ChatCompletionRequest) -> dict[str, str]:
    """The engine's field names in this caller's words (see app/api/dialect.py)."""
    if body.max_completion_tokens is not None:
        max_tokens = "max_completion_tokens"
    elif body.max_tokens is not None:
        max_tokens = "max_tokens"
    else:  # the rest of the window: an overflow is the messages'
        max_tokens = "messages"
    return {"prompt": "messages", "max_tokens": max_tokens}


def _chunk_builder(
    engine: EngineClient,
    base: dict[str, Any],
    logprobs: bool,
    top_n: int,
    usage_of: list[ChoicePlan] | None,
) -> ChunkBuilder:
    """`usage_of`: the plans, when every chunk carries its choice's usage (continuous)."""
    text_events: dict[int, EventTemplate] = {}

    def chunk(index: int, content: dict[str, str], lps: Any, finish: str | None) -> dict[str, Any]:
        choice = {"index": index, "delta": content, "logprobs": lps, "finish_reason": finish}
        return {**base, "choices": [choice]}

    def build_chunk(index: int, delta: GenerationDelta) -> ChatCompletionChunk | bytes | None:
        if not delta.text and not delta.logprobs and delta.finish_reason is None:
            return None  # text held back (a partial character or a possible stop string)
        if (
            delta.text and not logprobs and delta.finish_reason is None and usage_of is None
        ):  # once per token
            template = text_events.get(index)
            if template is None:
                marker = {"content": EventTemplate.TEXT}
                template = text_events[index] = EventTemplate(
                    ChatCompletionChunk, chunk(index, marker, None, None), [EventTemplate.TEXT]
                )
            return template.text(delta.text)
        lps = {"content": chat_logprobs(engine, delta.logprobs, top_n)} if logprobs else None
        content = {"content": delta.text} if delta.text else {}
        built = chunk(index, content, lps, delta.finish_reason)
        if usage_of is not None:
            built["usage"] = usage(
                [usage_of[index]], [delta.num_output_tokens], [delta.num_cached_tokens]
            )
        if delta.timings is not None:
            built["timings"] = timings_ms(delta.timings)
        return build(ChatCompletionChunk, built)

    return build_chunk
