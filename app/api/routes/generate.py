"""TGI's native API: POST /generate, POST /generate_stream, POST / (either, by "stream").

As in TGI: stop sequences stay in the generated text (finish_reason "stop_sequence"), the
stream is one event per token with no [DONE], and its last event carries generated_text and
details. Beyond TGI, the details of the last event always come (with input_length) and carry
a "timings" object.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import TypeAdapter

from app.api.capacity import check_prompt_tokens
from app.api.choices import (
    ChoicePlan,
    fold,
    log_request,
    open_streams,
)
from app.api.deps import engine_of, request_id_of, settings_of
from app.api.dialect import use_field_names
from app.api.errors import to_api_error
from app.api.event_stream import EventStreamResponse, StreamEvents
from app.api.ids import new_id
from app.api.logprobs import finite, tgi_prefill_token, tgi_token, tgi_top_tokens
from app.api.prompts import encode_text, truncate_prompt
from app.api.request_context import note_error
from app.api.responses import SLOT_FLOAT, EventTemplate, build, json_response, slot_int
from app.api.sampling import tgi_params
from app.api.schemas import GenerateRequest, GenerateResponse, StreamResponse
from app.api.schemas.common import TGI_ERROR_RESPONSES
from app.api.schemas.tgi import DEFAULT_MAX_NEW_TOKENS
from app.api.sse import event, sse_openapi
from app.api.streams import ChoiceStreams, collect_unless_disconnected
from app.api.timing import server_timing, timings_ms
from app.engine.client.validation import resolve_max_tokens
from app.engine.engine_client import EngineClient
from app.engine.protocol import FinishReason, GenerationDelta, GenerationResult

logger = logging.getLogger(__name__)
router = APIRouter(tags=["TGI"])

_COMPAT_ANSWER = TypeAdapter(list[GenerateResponse])  # POST /: TGI wraps the answer in a list


class _Prepared:
    """A validated TGI request, ready to run as one engine request."""

    def __init__(self, body: GenerateRequest, plan: ChoicePlan) -> None:
        self.body = body
        self.plan = plan
        self.ids = plan.prompt_ids
        self.params = body.params


# The engine's names for the sampling fields TGI nests under "parameters".
_PARAMETERS = ("temperature", "top_k", "top_p", "repetition_penalty", "frequency_penalty", "seed")


def _field_names(body: GenerateRequest) -> dict[str, str]:
    """The engine's field names in TGI's words (see app/api/dialect.py)."""
    names = {name: f"parameters.{name}" for name in _PARAMETERS}
    names["prompt"] = "inputs"
    # Unset, max_new_tokens is what fits (at most 100): then an overflow is the inputs'.
    sent = body.params.max_new_tokens is not None
    names["max_tokens"] = "parameters.max_new_tokens" if sent else "inputs"
    names["stop"] = "parameters.stop"
    return names


async def _prepare(
    body: GenerateRequest, request: Request, engine: EngineClient, *, stream: bool
) -> _Prepared:
    use_field_names(request, _field_names(body))
    p = body.params
    info = engine.info
    encoded = await encode_text(engine, body.inputs, truncating=p.truncate is not None)
    ids = truncate_prompt(encoded, p.truncate)
    # TGI's default, cut to what fits so a long prompt without max_new_tokens still works.
    max_tokens = resolve_max_tokens(
        p.max_new_tokens, len(ids), info.max_model_len, cap=DEFAULT_MAX_NEW_TOKENS
    )
    # Streams always report each token's logprob, as TGI's do; JSON answers only with details.
    logprobs = (p.top_n_tokens or 0) if stream or p.details else None
    # decoder_input_details reports each prompt token's logprob (the JSON answer only).
    prompt_logprobs = 0 if p.decoder_input_details and p.details and not stream else None
    params = tgi_params(
        p, max_tokens=max_tokens, logprobs=logprobs, prompt_logprobs=prompt_logprobs
    )
    return _Prepared(body, ChoicePlan(0, 0, ids, params))


def _open(engine: EngineClient, prepared: _Prepared, response_id: str) -> ChoiceStreams:
    return open_streams(engine, [prepared.plan], response_id)


def tgi_finish_reason(finish_reason: FinishReason | None, stop_reason: str | int | None) -> str:
    """The engine's reasons in TGI's words: length | eos_token | stop_sequence."""
    if finish_reason is FinishReason.STOP:
        return "stop_sequence" if isinstance(stop_reason, str) else "eos_token"
    return finish_reason or FinishReason.LENGTH


@router.post(
    "/generate",
    response_model=None,
    responses={**TGI_ERROR_RESPONSES, 200: {"model": GenerateResponse, "description": "Generated"}},
)
async def generate(
    body: GenerateRequest,
    request: Request,
) -> Response:
    return await _generate_json(body, request, compat=False)


@router.post(
    "/generate_stream",
    response_model=None,
    responses={**TGI_ERROR_RESPONSES, **sse_openapi("One event per token", StreamResponse)},
)
async def generate_stream(
    body: GenerateRequest,
    request: Request,
) -> Response:
    return await _generate_stream(body, request, compat=False)


@router.post(
    "/",
    response_model=None,
    responses={
        **TGI_ERROR_RESPONSES,
        **sse_openapi(
            "stream=false: a list with one generation; stream=true: /generate_stream's events",
            list[GenerateResponse],
        ),
    },
)
async def compat_generate(
    body: GenerateRequest,
    request: Request,
) -> Response:
    """What huggingface_hub's InferenceClient posts to when given the server's base URL."""
    if body.stream:
        return await _generate_stream(body, request, compat=True)
    return await _generate_json(body, request, compat=True)


def _full_text_prefix(body: GenerateRequest, compat: bool) -> str:
    # TGI: return_full_text defaults to false, except on POST / for text-generation models,
    # where it mirrors the transformers pipeline (and the hosted Inference API): true.
    full = body.params.return_full_text
    if full is None:
        full = compat
    return body.inputs if full else ""


async def _generate_json(body: GenerateRequest, request: Request, *, compat: bool) -> Response:
    engine, settings, request_id = engine_of(request), settings_of(request), request_id_of(request)
    prepared = await _prepare(body, request, engine, stream=False)
    check_prompt_tokens([len(prepared.ids)], settings)
    response_id = new_id("gen")
    log_request(response_id, request_id, [prepared.ids], 1, body.inputs, settings.log_prompts)
    streams = _open(engine, prepared, response_id)
    result = fold(await collect_unless_disconnected(streams, request))[0]
    answer: dict[str, Any] = {"generated_text": _full_text_prefix(body, compat) + result.text}
    if body.params.details:
        answer["details"] = _details(engine, prepared, result)
    built = build(GenerateResponse, answer)
    headers = server_timing(result.timings)
    if compat:
        return json_response(_COMPAT_ANSWER.dump_json([built]), headers=headers)
    return json_response(built, headers=headers)


def _details(engine: EngineClient, prepared: _Prepared, result: GenerationResult) -> dict[str, Any]:
    p = prepared.params
    logprobs = list(result.logprobs)
    tokens = [
        tgi_token(engine, token_id, logprobs[i] if i < len(logprobs) else None)
        for i, token_id in enumerate(result.token_ids)
    ]
    details: dict[str, Any] = {
        "finish_reason": tgi_finish_reason(result.finish_reason, result.stop_reason),
        "generated_tokens": result.num_output_tokens,
        "input_length": len(prepared.ids),
        "seed": p.seed,
        # TGI's prefill: each prompt token with its logprob (null for the first).
        "prefill": (
            [
                tgi_prefill_token(engine, token_id, result.prompt_logprobs or (), i)
                for i, token_id in enumerate(prepared.ids)
            ]
            if p.decoder_input_details
            else []
        ),
        "tokens": tokens,
    }
    if p.top_n_tokens:
        details["top_tokens"] = [tgi_top_tokens(engine, lp) for lp in logprobs]
    if result.timings is not None:
        details["timings"] = timings_ms(result.timings)
    return details


async def _generate_stream(body: GenerateRequest, request: Request, *, compat: bool) -> Response:
    engine, settings, request_id = engine_of(request), settings_of(request), request_id_of(request)
    prepared = await _prepare(body, request, engine, stream=True)
    check_prompt_tokens([len(prepared.ids)], settings)
    response_id = new_id("gen")
    log_request(response_id, request_id, [prepared.ids], 1, body.inputs, settings.log_prompts)
    streams = _open(engine, prepared, response_id)
    await streams.start(settings.keep_alive_seconds, request)
    events = _TGIEvents(engine, prepared, _full_text_prefix(body, compat))
    return EventStreamResponse(
        streams,
        events,
        keep_alive_seconds=settings.keep_alive_seconds,
        stream_interval=settings.stream_interval,
    )


class _TGIEvents(StreamEvents):
    """TGI's stream: one event per token, the last with generated_text and details; no [DONE]."""

    def __init__(self, engine: EngineClient, prepared: _Prepared, prefix: str) -> None:
        self._engine = engine
        self._prepared = prepared
        self._prefix = prefix
        self._top_n = prepared.params.top_n_tokens
        self._index = 0  # tokens so far: TGI numbers its events
        self._texts: list[str] = []  # joined once, for the last event's generated_text

    def delta(self, index: int, delta: GenerationDelta) -> bytes:
        self._texts.append(delta.text)
        if (
            len(delta.token_ids) == 1
            and delta.finish_reason is None
            and not self._top_n
            and delta.token_ids[0] != self._engine.info.eos_token_id
        ):  # once per token: one ordinary token, from the template
            self._index += 1
            lp = delta.logprobs[0] if delta.logprobs else None
            logprob = None if lp is None else finite(lp.logprob)
            return _TOKEN_EVENT(self._index, delta.token_ids[0], delta.text, logprob)
        payloads = _token_payloads(self._engine, delta, self._top_n)
        for k, payload in enumerate(payloads):
            self._index += 1
            payload["index"] = self._index
            if k == len(payloads) - 1 and delta.finish_reason is not None:
                payload["generated_text"] = self._prefix + "".join(self._texts)
                payload["details"] = _stream_details(self._prepared, delta)
        return b"".join(event(build(StreamResponse, payload)) for payload in payloads)

    def error(self, exc: Exception) -> bytes:
        note_error(exc)
        error = to_api_error(exc, "tgi")
        if error.status_code >= 500:
            logger.warning("generate_stream failed mid-way: %s", exc, exc_info=exc)
        # TGI's clients look at error_type; the mid-stream kind in TGI's words is "generation".
        return event(error.body("tgi", error_type="generation"))


def _token_payloads(
    engine: EngineClient, delta: GenerationDelta, top_n: int | None
) -> list[dict[str, Any]]:
    """A delta of k tokens gives k events: the first k-1 with empty text and the last with the
    delta's text, so the events' texts add up to the generated text. (The engine holds back a
    token that ends inside a UTF-8 character or may begin a stop string.)"""
    if not delta.token_ids:
        if delta.finish_reason is None and not delta.text:
            return []
        # A last delta without a token (a timeout, or flushed held-back text) still needs a
        # token for TGI's clients to parse: a special placeholder carrying the text.
        token = {"id": engine.info.eos_token_id, "text": delta.text, "logprob": None}
        return [_payload({**token, "special": True}, [] if top_n else None)]
    payloads = []
    last = len(delta.token_ids) - 1
    for k, token_id in enumerate(delta.token_ids):
        lp = delta.logprobs[k] if k < len(delta.logprobs) else None
        token = tgi_token(engine, token_id, lp, text=delta.text if k == last else "")
        payloads.append(_payload(token, tgi_top_tokens(engine, lp) if top_n else None))
    return payloads


def _payload(token: dict[str, Any], top_tokens: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {
        "index": 0,
        "token": token,
        "top_tokens": top_tokens,
        "generated_text": None,
        "details": None,
    }


# The event of one ordinary token (not special, no top tokens, not the last), as
# _token_payloads and _payload make it, with its index, id, text and logprob as slots.
_TOKEN_SLOTS = (slot_int(0), slot_int(1), EventTemplate.TEXT, SLOT_FLOAT)
_TOKEN_EVENT = EventTemplate(
    StreamResponse,
    {
        **_payload(
            {
                "id": _TOKEN_SLOTS[1],
                "text": EventTemplate.TEXT,
                "logprob": SLOT_FLOAT,
                "special": False,
            },
            None,
        ),
        "index": _TOKEN_SLOTS[0],
    },
    _TOKEN_SLOTS,
)


def _stream_details(prepared: _Prepared, delta: GenerationDelta) -> dict[str, Any]:
    details: dict[str, Any] = {
        "finish_reason": tgi_finish_reason(delta.finish_reason, delta.stop_reason),
        "generated_tokens": delta.num_output_tokens,
        "input_length": len(prepared.ids),
        "seed": prepared.params.seed,
    }
    if delta.timings is not None:
        details["timings"] = timings_ms(delta.timings)
    return details
