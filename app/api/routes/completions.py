"""POST /v1/completions (OpenAI's legacy completions, with vLLM's extensions)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.capacity import check_choices, check_prompt_tokens, count_prompts
from app.api.choices import (
    ChoicePlan,
    fold,
    log_request,
    open_streams,
    usage,
)
from app.api.deps import engine_of, request_id_of, settings_of
from app.api.dialect import use_field_names
from app.api.event_stream import EventStreamResponse
from app.api.ids import new_id
from app.api.logprobs import completion_logprobs, vllm_prompt_logprobs
from app.api.openai_stream import OpenAIEvents, base_chunk, openai_response
from app.api.prompts import check_model, completion_prompts, truncate_prompt
from app.api.responses import EventTemplate, build
from app.api.sampling import openai_params
from app.api.schemas import ERROR_RESPONSES, CompletionChunk, CompletionRequest, CompletionResponse
from app.api.sse import sse_openapi
from app.api.streams import collect_unless_disconnected
from app.api.timing import timings_ms
from app.config import Settings
from app.engine.client.validation import resolve_max_tokens
from app.engine.engine_client import EngineClient
from app.engine.protocol import GenerationDelta

router = APIRouter(tags=["OpenAI"])

OBJECT = "text_completion"


@router.post(
    "/v1/completions",
    response_model=None,
    responses={
        **ERROR_RESPONSES,
        **sse_openapi("A completion; with stream=true, an event stream", CompletionResponse),
    },
)
async def create_completion(
    body: CompletionRequest,
    request: Request,
) -> Response:
    engine, settings, request_id = engine_of(request), settings_of(request), request_id_of(request)
    check_model(body.model, settings)
    if body.max_tokens is None:  # the rest of the window: an overflow is the prompt's
        use_field_names(request, {"max_tokens": "prompt"})
    check_choices(count_prompts(body.prompt), body.n, engine, settings)
    info = engine.info
    prompts = [
        truncate_prompt(ids, body.truncate_prompt_tokens)
        for ids in await completion_prompts(
            engine, body.prompt, truncating=body.truncate_prompt_tokens is not None
        )
    ]
    plans: list[ChoicePlan] = []
    prompt_logprobs = _prompt_scoring(body)
    for prompt_index, ids in enumerate(prompts):
        max_tokens = resolve_max_tokens(body.max_tokens, len(ids), info.max_model_len)
        for choice in range(body.n):
            params = openai_params(
                body,
                max_tokens=max_tokens,
                logprobs=body.logprobs,
                choice=choice,
                prompt_logprobs=prompt_logprobs,
            )
            plans.append(ChoicePlan(len(plans), prompt_index, ids, params))

    check_prompt_tokens([len(plan.prompt_ids) for plan in plans], settings)
    response_id = new_id("cmpl")
    log_request(response_id, request_id, prompts, body.n, body.prompt, settings.log_prompts)
    echo = [engine.decode(ids) for ids in prompts] if body.echo else []
    streams = open_streams(engine, plans, response_id)
    created = int(time.time())

    if body.stream:
        await streams.start(settings.keep_alive_seconds, request)
        builder = _ChunkBuilder(engine, body, plans, echo, response_id, created, settings)
        events = OpenAIEvents(
            build_chunk=builder,
            usage_chunk=builder.usage_chunk if body.include_usage else None,
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
    choices: list[dict[str, Any]] = []
    for plan, result in zip(plans, results, strict=True):
        prefix = echo[plan.prompt_index] if body.echo else ""
        logprobs = None
        if body.logprobs is not None:
            logprobs, _ = completion_logprobs(
                engine,
                result.logprobs,
                text_offset=0,
                echo_ids=plan.prompt_ids if body.echo else (),
                echo_logprobs=result.prompt_logprobs or (),
                echo_top_n=body.logprobs,
            )
        answer: dict[str, Any] = {
            "index": plan.index,
            "text": prefix + result.text,
            "logprobs": logprobs,
            "finish_reason": result.finish_reason,
        }
        if body.prompt_logprobs is not None:
            answer["prompt_logprobs"] = vllm_prompt_logprobs(
                engine, plan.prompt_ids, result.prompt_logprobs or (), body.prompt_logprobs
            )
        choices.append(answer)
    head = base_chunk(response_id, OBJECT, created, settings.model_name)
    return openai_response(CompletionResponse, head, choices, plans, results)


class _ChunkBuilder:
    """Turns one choice's delta into a stream chunk; remembers each choice's text offset."""

    def __init__(
        self,
        engine: EngineClient,
        body: CompletionRequest,
        plans: list[ChoicePlan],
        echo: list[str],
        response_id: str,
        created: int,
        settings: Settings,
    ) -> None:
        self.engine = engine
        self.body = body
        self.plans = plans
        self.echo = echo
        self.base = base_chunk(response_id, OBJECT, created, settings.model_name)
        # The prompt went out with the choice's first piece (echo), or none is due: until
        # then a choice's chunks take the general path.
        self.echoed = [not body.echo] * len(plans)
        self.offsets = [0] * len(plans)
        self.text_events: dict[int, EventTemplate] = {}
        self.continuous_usage = body.continuous_usage
        # Chunks that carry only text: no logprobs, no usage in every chunk.
        self.plain = body.logprobs is None and not self.continuous_usage

    def text_event(self, index: int, text: str) -> bytes:
        """The event for new text alone (no logprobs, not the last), from its template."""
        template = self.text_events.get(index)
        if template is None:
            chunk = self._chunk(index, EventTemplate.TEXT, None, None)
            template = self.text_events[index] = EventTemplate(
                CompletionChunk, chunk, [EventTemplate.TEXT]
            )
        return template.text(text)

    def _chunk(
        self, index: int, text: str, logprobs: Any, finish_reason: str | None
    ) -> dict[str, Any]:
        choice = {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }
        return {**self.base, "choices": [choice]}

    def __call__(self, index: int, delta: GenerationDelta) -> CompletionChunk | bytes | None:
        text = delta.text
        if text and self.plain and self.echoed[index] and delta.finish_reason is None:
            return self.text_event(index, text)  # the common case, once per token
        plan = self.plans[index]
        echo_ids: list[int] = []
        if not self.echoed[index]:  # the prompt goes out with the choice's first piece
            self.echoed[index] = True
            text = self.echo[plan.prompt_index] + text
            echo_ids = plan.prompt_ids
        logprobs = None
        if self.body.logprobs is not None:
            logprobs, self.offsets[index] = completion_logprobs(
                self.engine,
                delta.logprobs,
                text_offset=self.offsets[index],
                echo_ids=echo_ids,
                echo_logprobs=delta.prompt_logprobs or (),
                echo_top_n=self.body.logprobs,
            )
        if not text and not delta.logprobs and not echo_ids and delta.finish_reason is None:
            return None  # text held back (a partial character or a possible stop string)
        chunk = self._chunk(index, text, logprobs, delta.finish_reason)
        if self.continuous_usage:  # vLLM's: this choice's usage so far
            chunk["usage"] = usage([plan], [delta.num_output_tokens], [delta.num_cached_tokens])
        if delta.timings is not None:
            chunk["timings"] = timings_ms(delta.timings)
        return build(CompletionChunk, chunk)

    def usage_chunk(self, outputs: list[int], cached: list[int]) -> CompletionChunk:
        chunk = {**self.base, "choices": [], "usage": usage(self.plans, outputs, cached)}
        return build(CompletionChunk, chunk)


def _prompt_scoring(body: CompletionRequest) -> int | None:
    """How many alternatives the engine reports per prompt token, or None to score nothing:
    echo with logprobs scores the echoed prompt (as OpenAI's API did), and vLLM's
    prompt_logprobs asks for it outright."""
    wanted = [body.prompt_logprobs, body.logprobs if body.echo else None]
    present = [k for k in wanted if k is not None]
    return max(present) if present else None
