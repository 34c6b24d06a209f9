"""The per-token stream events written from templates equal the ones their models write."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.logprobs import FLOOR
from app.api.responses import SLOT_FLOAT, EventTemplate, build, slot_int
from app.api.routes.generate import _TOKEN_EVENT, _payload, _TGIEvents, _token_payloads
from app.api.schemas import StreamResponse
from app.api.schemas.openai_responses import ChatCompletionChunk, CompletionChunk
from app.api.sse import event
from app.engine.protocol import GenerationDelta, TokenLogprobs
from tests.api.conftest import sse_events
from tests.api.fakes import EOS, VOCAB, FakeEngineClient

TEXTS = [
    "a",
    " the",
    'quote " and \\ backslash',
    "line\nbreak\ttab\rreturn",
    "\x00\x01\x1f\x7f control",
    "日本語 😀 émoji",
    "\u2028\u2029 separators",
    "</script>",
    "\ufffd replacement",
]


def completion_chunk(text: str, index: int = 0) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": None}],
    }


def chat_chunk(text: str, index: int = 0) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
        ],
    }


@pytest.mark.parametrize("text", TEXTS)
def test_template_writes_what_the_model_writes(text: str) -> None:
    marker = EventTemplate.TEXT
    for model, chunk in ((CompletionChunk, completion_chunk), (ChatCompletionChunk, chat_chunk)):
        template = EventTemplate(model, chunk(marker, index=3), [marker])
        assert template.text(text) == event(build(model, chunk(text, index=3)))
        assert template(text) == template.text(text)


def tgi_token_event(index: int, token_id: int, text: str, logprob: float | None) -> bytes:
    token = {"id": token_id, "text": text, "logprob": logprob, "special": False}
    return event(build(StreamResponse, {**_payload(token, None), "index": index}))


def test_tgi_token_template_writes_what_the_model_writes() -> None:
    """Index, id, text and logprob each in their slot, for texts that need escaping and
    logprobs of every shape (None, zero, tiny, the floor that stands for -inf, random)."""
    rng = random.Random(0)
    logprobs = [None, 0.0, -0.0, -1e-05, -0.5, -123.456789, FLOOR, -1e-300, -7.0e22]
    cases = [(i + 1, i, text, lp) for i, (text, lp) in enumerate(zip(TEXTS, logprobs, strict=True))]
    cases += [
        (rng.randrange(1, 5000), rng.randrange(50_257), rng.choice(TEXTS), -rng.expovariate(0.3))
        for _ in range(300)
    ]
    for index, token_id, text, logprob in cases:
        expected = tgi_token_event(index, token_id, text, logprob)
        assert _TOKEN_EVENT(index, token_id, text, logprob) == expected


def test_tgi_stream_writes_what_its_general_path_writes(fake: FakeEngineClient) -> None:
    """Ordinary tokens take the template in _TGIEvents.delta; every token, EOS in mid-stream
    (special) and logprobs of -inf (the floor) and None included, reads as the general path
    (_token_payloads through the model) writes it."""
    rng = random.Random(2)
    prepared: Any = SimpleNamespace(params=SimpleNamespace(top_n_tokens=None))
    events = _TGIEvents(fake, prepared, prefix="")
    for index in range(1, 400):
        token_id = rng.choice([EOS, rng.randrange(VOCAB)])
        logprob = rng.choice([None, -math.inf, 0.0, -rng.expovariate(0.5)])
        lps = () if logprob is None else (TokenLogprobs(token_id, logprob),)
        text = rng.choice(TEXTS)
        delta = GenerationDelta("r", text, (token_id,), lps, None, 2, index)
        (payload,) = _token_payloads(fake, delta, None)
        payload["index"] = index
        assert events.delta(0, delta) == event(build(StreamResponse, payload))


def test_an_event_without_each_slot_once_is_refused() -> None:
    with pytest.raises(ValueError, match="exactly once"):
        EventTemplate(CompletionChunk, completion_chunk("no marker"), [EventTemplate.TEXT])
    twice = {**completion_chunk(EventTemplate.TEXT), "id": EventTemplate.TEXT}
    with pytest.raises(ValueError, match="exactly once"):
        EventTemplate(CompletionChunk, twice, [EventTemplate.TEXT])
    token = {"id": slot_int(1), "text": "t", "logprob": SLOT_FLOAT, "special": False}
    data = {**_payload(token, None), "index": slot_int(0)}
    with pytest.raises(ValueError, match="order"):  # the model writes the index first
        EventTemplate(StreamResponse, data, [slot_int(1), slot_int(0), SLOT_FLOAT])


def test_streamed_text_events_carry_the_text(client: TestClient, fake: FakeEngineClient) -> None:
    """Over HTTP, through the templates: quotes and line breaks arrive intact, every event
    reads strictly as its model."""
    fake.script = ' say "hi"\nok'  # 12 bytes, one token each
    for path, body, model in (
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 12, "stream": True}, CompletionChunk),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12, "stream": True},
            ChatCompletionChunk,
        ),
    ):
        events = sse_events(client.post(path, json=body).text)
        chunks = [e for e in events if isinstance(e, dict) and e.get("choices")]
        for c in chunks:
            model.model_validate(c, strict=True)
        choices = [c["choices"][0] for c in chunks]
        texts = [ch["text"] if "text" in ch else ch["delta"].get("content", "") for ch in choices]
        assert "".join(texts) == fake.script
        assert choices[-1]["finish_reason"] == "length"
