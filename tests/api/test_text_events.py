"""The per-token stream event written from a template equals the one its model writes."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.responses import TextEventTemplate, build
from app.api.schemas.openai_responses import ChatCompletionChunk, CompletionChunk
from app.api.sse import event
from tests.api.conftest import sse_events
from tests.api.fakes import FakeEngineClient

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
    marker = TextEventTemplate.chunk_text()
    for model, chunk in ((CompletionChunk, completion_chunk), (ChatCompletionChunk, chat_chunk)):
        template = TextEventTemplate(model, chunk(marker, index=3))
        assert template(text) == event(build(model, chunk(text, index=3)))


def test_a_chunk_without_the_marker_is_refused() -> None:
    with pytest.raises(ValueError, match="marker"):
        TextEventTemplate(CompletionChunk, completion_chunk("no marker"))


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
