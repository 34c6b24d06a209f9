"""Issue 16 at the HTTP layer, over the fake engine: what a client sees when things go wrong."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.api.fakes import FakeEngineClient


def test_models_shows_the_served_name_and_model_refuses_the_path(fake: FakeEngineClient) -> None:
    settings = Settings(model="/srv/models/fake-gpt2")
    with TestClient(create_app(settings, fake)) as client:
        [card] = client.get("/v1/models").json()["data"]
        assert card["id"] == card["root"] == "fake-gpt2"
        r = client.post("/v1/completions", json={"model": "/srv/models/fake-gpt2", "prompt": "a"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "model"
        r = client.post("/v1/completions", json={"model": "fake-gpt2", "prompt": "a"})
        assert r.status_code == 200


def test_openapi_states_the_cross_field_rules(client: TestClient) -> None:
    """Both rules answer 400; the schema says so, in words and machine-readably."""
    schemas: dict[str, Any] = client.get("/openapi.json").json()["components"]["schemas"]
    top = schemas["ChatCompletionRequest"]["properties"]["top_logprobs"]
    assert top["x-requires"] == {"logprobs": True}
    assert "logprobs=true" in top["description"] and "400" in top["description"]
    prompt = schemas["CompletionRequest"]["properties"]["prompt_logprobs"]
    assert prompt["x-not-with"] == {"stream": True}
    assert "stream=true" in prompt["description"] and "400" in prompt["description"]


def test_a_request_larger_than_the_server_is_bad_input_before_anything_is_admitted(
    fake: FakeEngineClient,
) -> None:
    """More choices than max_num_seqs + max_queued_requests (4 + 16 here), or more prompt tokens
    than max_queued_tokens, can never be admitted: bad input (400; 422 on TGI's routes) naming
    the limit, not a 429 forever, and
    nothing reaches the engine (10,000 prompts are not even tokenized)."""
    settings = Settings(model="fake-gpt2", max_queued_requests=16, max_queued_tokens=40)
    with TestClient(create_app(settings, fake)) as client:
        for body in (
            {"prompt": ["a"] * 25},
            {"prompt": ["a", "b"], "n": 16},
            {"prompt": [[1, 2]] * 10_000},
            {"prompt": ["x"] * 10_000},
        ):
            r = client.post("/v1/completions", json=body)
            assert r.status_code == 400, r.text
            assert "max_num_seqs 4 + max_queued_requests 16" in r.json()["error"]["message"]
        r = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "n": 16},  # 16 x 12 tokens
        )
        assert r.status_code == 400 and "max_queued_tokens" in r.json()["error"]["message"]
        r = client.post("/generate", json={"inputs": "y" * 41})
        assert r.status_code == 422 and "max_queued_tokens" in r.json()["error"]["message"]
        assert fake.calls == []
        assert client.post("/v1/completions", json={"prompt": ["a"] * 20}).status_code == 200
    assert len(fake.calls) == 20


def test_text_that_cannot_fit_is_refused_unless_truncation_is_asked(client: TestClient) -> None:
    """The fake tokenizes one token per byte, with a context of 128 tokens."""
    long = "x" * 900_000
    for path, body, status, param, wording in (
        ("/v1/completions", {"prompt": long}, 400, "prompt", "maximum context length is 128"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": long}]},
            400,
            "messages",
            "maximum context length is 128",
        ),
        ("/generate", {"inputs": long}, 422, "inputs", "`inputs` must have less than 128"),
    ):
        r = client.post(path, json=body)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["param"] == param and "at least 900" in error["message"], error
        assert wording in error["message"]
    r = client.post(
        "/v1/completions", json={"prompt": "x" * 500, "truncate_prompt_tokens": 8, "max_tokens": 1}
    )
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 8
    r = client.post("/generate", json={"inputs": "y" * 500, "parameters": {"truncate": 8}})
    assert r.status_code == 200, r.text
    assert client.post("/tokenize", json={"prompt": "z" * 500}).json()["count"] == 500


STREAMED: dict[str, dict[str, Any]] = {
    "/v1/completions": {"prompt": "Hi", "max_tokens": 5, "stream": True, "n": 2},
    "/v1/chat/completions": {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 5,
        "stream": True,
    },
    "/generate_stream": {"inputs": "Hi", "parameters": {"max_new_tokens": 5}},
}


async def _leave_while_queued(app: Any, fake: FakeEngineClient, path: str, how: str) -> None:
    """Post a streamed request straight to the ASGI app; once the engine has it (queued: the
    fake never produces a token), the client leaves (http.disconnect) or the server cancels
    the handler (as uvicorn does past its graceful timeout)."""
    body = json.dumps(STREAMED[path]).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    left = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    handler = asyncio.create_task(app(scope, receive, send))
    expected = STREAMED[path].get("n", 1)
    while len(fake.calls) < expected:
        await asyncio.sleep(0.01)
    if how == "disconnect":
        left.set()
        await asyncio.wait_for(handler, 10)
    else:
        handler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(handler, 10)
    # Checked here, while the loop runs: asyncio.run's clean-up would cancel what was left.
    assert sorted(fake.aborted) == sorted(call.request_id for call in fake.calls)
    assert fake.num_in_flight == 0
    assert not any(m["type"] == "http.response.body" and m.get("body") for m in sent)


@pytest.mark.parametrize("how", ["disconnect", "cancel"])
@pytest.mark.parametrize("path", list(STREAMED))
def test_a_queued_stream_is_aborted_when_its_client_leaves(
    fake: FakeEngineClient, path: str, how: str
) -> None:
    """Before its first token a stream writes nothing (keep-alives every keep_alive_seconds at
    most), so only a watch on http.disconnect notices the client leaving: its place in the
    queue is freed at once, not when it is scheduled and produces a token."""
    fake.token_delay = 3600.0  # queued for good
    app = create_app(Settings(model="fake-gpt2", keep_alive_seconds=3600.0), fake)
    asyncio.run(_leave_while_queued(app, fake, path, how))
