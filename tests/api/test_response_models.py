"""Every answer, streamed or not, is what its declared response model says, key for key.

`conforms` reads the bytes the route sent with the model, strictly (no "1" for 1) and with
unknown keys forbidden at every level, then writes the model back and asks for the same JSON:
so an undeclared key, a missing required one, a null where the model leaves a None out, or a
key the model would add (a default the route dropped) all fail. The shapes clients depend on
(`logprobs: null`, `finish_reason: null`, "timings" only when known) are asserted as well.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, TypeAdapter, ValidationError

from app.api.schemas import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    CompletionChunk,
    CompletionResponse,
    DetokenizeResponse,
    EngineStats,
    ErrorResponse,
    GenerateResponse,
    HealthResponse,
    Info,
    ModelList,
    StreamResponse,
    TokenizeResponse,
)
from app.config import Settings
from app.engine.protocol import DeltaSink, GenerationDelta
from app.main import create_app
from tests.api.engine_view import engine_view, use_engine_view
from tests.api.fakes import FakeEngineClient

CHAT = [{"role": "user", "content": "Hi"}]


def conforms(shape: Any, raw: str | bytes) -> Any:
    """`raw` is exactly an instance of `shape` (a response model, or e.g. a list of one)."""
    adapter: TypeAdapter[Any] = TypeAdapter(shape)
    value = adapter.validate_json(raw, strict=True, extra="forbid")
    assert json.loads(adapter.dump_json(value)) == json.loads(raw), "not what the model writes"
    return value


def answer(r: Any, shape: Any, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    return conforms(shape, r.content)


def events(r: Any) -> list[str]:
    """The raw data of each event (keep-alive comments skipped), [DONE] included."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    data = []
    for block in r.text.split("\n\n"):
        if block and not block.startswith(":"):
            assert block.startswith("data: ") and "\n" not in block, block
            data.append(block[len("data: ") :])
    return data


def stream(r: Any, chunk: type[BaseModel], *, done: bool = True) -> list[Any]:
    """Every event of an OpenAI stream (or, done=False, a TGI one) is a `chunk`."""
    data = events(r)
    if done:
        assert data[-1] == "[DONE]" and "[DONE]" not in data[:-1]
        data = data[:-1]
    return [conforms(chunk, raw) for raw in data]


def error(r: Any, status: int, code: str | None = None) -> ErrorResponse:
    """The envelope; its code is OpenAI's `code` where given, else the status."""
    envelope: ErrorResponse = answer(r, ErrorResponse, status)
    assert envelope.error.code == (code or status)
    return envelope


# ---- the declarations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "model"),
    [
        ("post", "/v1/completions", "CompletionResponse"),
        ("post", "/v1/chat/completions", "ChatCompletionResponse"),
        ("post", "/generate", "GenerateResponse"),
        ("get", "/info", "Info"),
        ("get", "/v1/models", "ModelList"),
        ("post", "/tokenize", "TokenizeResponse"),
        ("post", "/detokenize", "DetokenizeResponse"),
        ("get", "/health", "HealthResponse"),
        ("get", "/ready", "HealthResponse"),
        ("get", "/v1/engine/stats", "EngineStats"),
    ],
)
def test_openapi_names_each_answers_model(
    client: TestClient, method: str, path: str, model: str
) -> None:
    responses = client.get("/openapi.json").json()["paths"][path][method]["responses"]
    schema = responses["200"]["content"]["application/json"]["schema"]
    assert schema["$ref"] == f"#/components/schemas/{model}"
    for status, response in responses.items():
        if status != "200":
            error = response["content"]["application/json"]["schema"]
            assert error["$ref"] == "#/components/schemas/ErrorResponse", status


# ---- the check itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        "undeclared key",
        "undeclared nested key",
        "missing required key",
        "missing nullable key",
        "null where omitted",
        "default dropped",
        "wrong type",
    ],
)
def test_conforms_rejects_what_the_model_does_not_say(client: TestClient, change: str) -> None:
    body = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).json()
    conforms(CompletionResponse, json.dumps(body))
    choice = body["choices"][0]
    if change == "undeclared key":
        body["system_fingerprint"] = "x"
    elif change == "undeclared nested key":
        choice["stop_reason"] = None
    elif change == "missing required key":
        del body["usage"]
    elif change == "missing nullable key":
        del choice["logprobs"]
    elif change == "null where omitted":
        choice["prompt_logprobs"] = None
    elif change == "default dropped":
        del body["object"]
    elif change == "wrong type":
        body["created"] = str(body["created"])
    with pytest.raises((ValidationError, AssertionError)):
        conforms(CompletionResponse, json.dumps(body))


# ---- OpenAI completions ----------------------------------------------------------------------


def test_completion(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3})
    body = answer(r, CompletionResponse)
    raw = r.json()
    assert raw["choices"][0]["logprobs"] is None  # sent as null, as OpenAI does
    assert "prompt_logprobs" not in raw["choices"][0]
    assert body.timings is not None and body.usage.total_tokens == 5


def test_completion_with_logprobs_echo_and_choices(client: TestClient) -> None:
    r = client.post(
        "/v1/completions",
        json={"prompt": ["Hi", "Yo"], "n": 2, "max_tokens": 3, "logprobs": 2, "echo": True},
    )
    body = answer(r, CompletionResponse)
    assert [c.index for c in body.choices] == [0, 1, 2, 3]
    lp = body.choices[0].logprobs
    assert lp is not None and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert len(lp.tokens) == 2 + 3


def test_completion_with_prompt_logprobs(client: TestClient) -> None:
    r = client.post(
        "/v1/completions", json={"prompt": "Hey", "max_tokens": 2, "prompt_logprobs": 1}
    )
    body = answer(r, CompletionResponse)
    scored = body.choices[0].prompt_logprobs
    assert scored is not None and scored[0] is None and len(scored) == 3


def test_completion_stream(client: TestClient) -> None:
    r = client.post(
        "/v1/completions",
        json={
            "prompt": "Hi",
            "n": 2,
            "max_tokens": 3,
            "logprobs": 1,
            "echo": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    chunks = stream(r, CompletionChunk)
    *texts, usage = chunks
    assert usage.choices == [] and usage.usage is not None and usage.usage.completion_tokens == 6
    assert all(len(c.choices) == 1 and c.usage is None for c in texts)
    assert all(c.choices[0].logprobs is not None for c in texts)
    finished = [c for c in texts if c.choices[0].finish_reason is not None]
    assert len(finished) == 2 and all(c.timings is not None for c in finished)
    assert all(c.timings is None for c in texts if c.choices[0].finish_reason is None)


def test_completion_stream_plain_keeps_nulls(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "stream": True})
    stream(r, CompletionChunk)
    first = json.loads(events(r)[0])
    assert first["choices"][0]["logprobs"] is None
    assert first["choices"][0]["finish_reason"] is None
    assert "usage" not in first and "timings" not in first


def continuous(stream_options: dict[str, bool] | None = None) -> dict[str, Any]:
    options = {"include_usage": True, "continuous_usage_stats": True, **(stream_options or {})}
    return {"stream": True, "stream_options": options}


def test_completion_stream_continuous_usage(client: TestClient) -> None:
    """vLLM's continuous_usage_stats: every chunk carries its choice's usage so far (its prompt,
    the tokens it has generated), and the last chunk the whole request's."""
    body = {"prompt": ["Hi", "Hey"], "max_tokens": 3, **continuous()}
    chunks = stream(client.post("/v1/completions", json=body), CompletionChunk)
    *texts, last = chunks
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (2 + 3, 6)
    seen: dict[int, int] = {}
    for chunk in texts:
        choice, usage = chunk.choices[0], chunk.usage
        assert usage is not None, chunk
        assert usage.prompt_tokens == (2 if choice.index == 0 else 3)
        assert usage.completion_tokens == seen.get(choice.index, 0) + 1  # one token each
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        seen[choice.index] = usage.completion_tokens
    assert seen == {0: 3, 1: 3}


def test_continuous_usage_needs_include_usage_as_in_vllm(client: TestClient) -> None:
    body = {"prompt": "Hi", "max_tokens": 2, **continuous({"include_usage": False})}
    chunks = stream(client.post("/v1/completions", json=body), CompletionChunk)
    assert all(chunk.usage is None for chunk in chunks)


# ---- OpenAI chat -----------------------------------------------------------------------------


def test_chat_completion(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2})
    body = answer(r, ChatCompletionResponse)
    assert r.json()["choices"][0]["logprobs"] is None
    assert body.choices[0].message.role == "assistant"


def test_chat_completion_with_logprobs_and_choices(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={"messages": CHAT, "max_tokens": 2, "n": 2, "logprobs": True, "top_logprobs": 2},
    )
    body = answer(r, ChatCompletionResponse)
    assert len(body.choices) == 2
    lp = body.choices[1].logprobs
    assert lp is not None and lp.content is not None and len(lp.content[0].top_logprobs) == 2


@pytest.mark.parametrize("logprobs", [False, True])
def test_chat_stream(client: TestClient, logprobs: bool) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={
            "messages": CHAT,
            "max_tokens": 2,
            "n": 2,
            "logprobs": logprobs,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    chunks = stream(r, ChatCompletionChunk)
    raw = [json.loads(e) for e in events(r)[:-1]]
    assert [c["choices"][0]["delta"] for c in raw[:2]] == [{"role": "assistant", "content": ""}] * 2
    assert all(c["choices"][0]["logprobs"] is None for c in raw[:2])
    *texts, usage = chunks
    assert usage.choices == [] and usage.usage is not None and usage.usage.completion_tokens == 4
    for chunk in texts[2:]:
        assert (chunk.choices[0].logprobs is not None) is logprobs
        assert (chunk.timings is not None) is (chunk.choices[0].finish_reason is not None)


def test_chat_stream_continuous_usage(client: TestClient) -> None:
    body = {"messages": CHAT, "max_tokens": 2, "n": 2, **continuous()}
    chunks = stream(client.post("/v1/chat/completions", json=body), ChatCompletionChunk)
    *texts, last = chunks
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 4
    prompt = last.usage.prompt_tokens
    roles = [c for c in texts if c.choices[0].delta.role is not None]
    assert len(roles) == 2
    assert all(c.usage is not None and c.usage.completion_tokens == 0 for c in roles)
    counts = [
        (c.choices[0].index, c.usage.completion_tokens)
        for c in texts
        if c.usage is not None and c.choices[0].delta.role is None
    ]
    assert len(counts) == len(texts) - 2  # every chunk has it
    assert sorted(counts) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert all(c.usage is not None and c.usage.prompt_tokens == prompt for c in texts)


# ---- TGI -------------------------------------------------------------------------------------


def test_generate(client: TestClient) -> None:
    r = client.post("/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}})
    answer(r, GenerateResponse)
    assert r.json() == {"generated_text": " t"}  # no details unless asked


def test_generate_with_details(client: TestClient) -> None:
    params = {
        "max_new_tokens": 3,
        "details": True,
        "decoder_input_details": True,
        "top_n_tokens": 2,
        "seed": 7,
    }
    r = client.post("/generate", json={"inputs": "Hi", "parameters": params})
    details = answer(r, GenerateResponse).details
    assert details is not None and details.timings is not None and details.seed == 7
    assert details.prefill[0].logprob is None and len(details.prefill) == 2
    assert details.top_tokens is not None and len(details.top_tokens) == 3


def test_generate_details_without_top_tokens(client: TestClient) -> None:
    params = {"max_new_tokens": 2, "details": True}
    r = client.post("/generate", json={"inputs": "Hi", "parameters": params})
    answer(r, GenerateResponse)
    assert "top_tokens" not in r.json()["details"] and r.json()["details"]["prefill"] == []


@pytest.mark.parametrize("details", [False, True])
@pytest.mark.parametrize("top_n", [None, 2])
def test_generate_stream(client: TestClient, details: bool, top_n: int | None) -> None:
    params = {"max_new_tokens": 3, "details": details, "top_n_tokens": top_n}
    r = client.post("/generate_stream", json={"inputs": "Hi", "parameters": params})
    tokens = stream(r, StreamResponse, done=False)
    assert [t.index for t in tokens] == [1, 2, 3]
    assert all(t.details is None and t.generated_text is None for t in tokens[:-1])
    assert tokens[-1].details is not None and tokens[-1].details.timings is not None
    assert all((t.top_tokens is None) is (top_n is None) for t in tokens)


def test_generate_stream_ending_without_a_token(
    client: TestClient, fake: FakeEngineClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A last delta without a token (a timeout, or held-back text flushed at the end) goes out
    as a special placeholder token carrying the text."""
    add_request = fake.add_request

    def tokenless_end(*args: Any, sink: DeltaSink, **kwargs: Any) -> Any:
        def split_last(item: GenerationDelta | BaseException) -> None:
            if isinstance(item, BaseException) or item.finish_reason is None:
                sink(item)
            else:
                sink(dataclasses.replace(item, finish_reason=None, timings=None))
                sink(dataclasses.replace(item, text="!", token_ids=(), logprobs=()))

        return add_request(*args, sink=split_last, **kwargs)

    monkeypatch.setattr(fake, "add_request", tokenless_end)
    params = {"max_new_tokens": 2, "top_n_tokens": 1}
    r = client.post("/generate_stream", json={"inputs": "Hi", "parameters": params})
    *_, last = stream(r, StreamResponse, done=False)
    assert last.token.special and last.token.text == "!" and last.top_tokens == []
    assert last.generated_text == " t!" and last.details is not None


def test_compat_route(client: TestClient) -> None:
    r = client.post("/", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}})
    [body] = answer(r, list[GenerateResponse])
    assert body.generated_text == "Hi t"
    r = client.post("/", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}, "stream": True})
    assert len(stream(r, StreamResponse, done=False)) == 2


# ---- the rest --------------------------------------------------------------------------------


def test_info_and_models(client: TestClient) -> None:
    answer(client.get("/info"), Info)
    assert client.get("/info").json()["model_sha"] is None  # TGI's keys, null when unknown
    models = answer(client.get("/v1/models"), ModelList)
    assert [card.id for card in models.data] == ["fake-gpt2"]


def test_tokenizer_routes(client: TestClient) -> None:
    tokens = answer(client.post("/tokenize", json={"prompt": "Hé"}), TokenizeResponse)
    assert tokens.count == 3
    back = answer(client.post("/detokenize", json={"tokens": tokens.tokens}), DetokenizeResponse)
    assert back.prompt == "Hé"


def test_probes(client: TestClient, fake: FakeEngineClient) -> None:
    assert answer(client.get("/health"), HealthResponse).status == "ok"
    assert answer(client.get("/ready"), HealthResponse).status == "ready"
    fake.ready = False
    assert error(client.get("/ready"), 503).error_type == "unavailable"


@pytest.mark.parametrize("stepped", [True, False])
def test_engine_stats(
    client: TestClient, fake: FakeEngineClient, monkeypatch: pytest.MonkeyPatch, stepped: bool
) -> None:
    use_engine_view(fake, monkeypatch, stepped)
    stats = answer(client.get("/v1/engine/stats"), EngineStats)
    assert (stats.kv_cache_usage is not None) is stepped


@pytest.mark.parametrize("stepped", [True, False])
def test_engine_stats_model_covers_the_engine_view(stepped: bool) -> None:
    """The route leaves out what EngineStats does not declare: a key the engine's view gains
    fails here until it is declared."""
    view, _ = engine_view(stepped)
    EngineStats.model_validate({**view, "recent_step_ms": []}, strict=True, extra="forbid")


# ---- errors ----------------------------------------------------------------------------------


def test_error_envelopes(client: TestClient, fake: FakeEngineClient) -> None:
    assert error(client.post("/v1/completions", json={"n": 17}), 400).error.param == "n"
    assert error(client.post("/generate", json={}), 422).error_type == "validation"
    assert error(client.get("/nowhere"), 404).error_type == "not_found"
    r = client.post("/v1/completions", json={"model": "gpt-4"})
    assert error(r, 404, "model_not_found").error.param == "model"
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 200})
    assert error(r, 400, "context_length_exceeded").error.param == "max_tokens"
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_token": 4})
    assert error(r, 400).error.param == "max_token"
    r = client.post("/generate", json={"inputs": "Hi", "parameters": {"max_token": 4}})
    assert error(r, 422).error.param == "parameters.max_token"
    assert error(client.get("/v1/completions"), 405).error_type == "validation"
    fake.overloaded = True
    assert error(client.post("/generate", json={"inputs": "Hi"}), 429).error_type == "overloaded"
    body = {"prompt": "Hi", "stream": True}
    assert error(client.post("/v1/completions", json=body), 429).error.type == "rate_limit_error"


def test_auth_and_size_errors(fake: FakeEngineClient) -> None:
    settings = Settings(model="fake-gpt2", api_key="secret", max_request_body_bytes=64)
    with TestClient(create_app(settings, fake)) as client:
        assert error(client.get("/v1/models"), 401).error_type == "authentication"
        r = client.post(
            "/v1/completions",
            json={"prompt": "x" * 100},
            headers={"Authorization": "Bearer secret"},
        )
        assert error(r, 413).error_type == "validation"


@pytest.mark.parametrize(
    ("path", "body", "chunk"),
    [
        ("/v1/completions", {"prompt": "Hi", "stream": True}, CompletionChunk),
        ("/v1/chat/completions", {"messages": CHAT, "stream": True}, ChatCompletionChunk),
    ],
)
def test_openai_stream_error_event(
    client: TestClient, fake: FakeEngineClient, path: str, body: dict[str, Any], chunk: Any
) -> None:
    fake.die_after = 2
    data = events(client.post(path, json=body))
    assert data[-1] == "[DONE]"
    *chunks, last = data[:-1]
    for raw in chunks:
        conforms(chunk, raw)
    failed: ErrorResponse = conforms(ErrorResponse, last)
    assert failed.error.code == 503 and failed.error_type == "unavailable"


def test_tgi_stream_error_event(client: TestClient, fake: FakeEngineClient) -> None:
    fake.die_after = 1
    *tokens, last = events(client.post("/generate_stream", json={"inputs": "Hi"}))
    for raw in tokens:
        conforms(StreamResponse, raw)
    failed: ErrorResponse = conforms(ErrorResponse, last)
    assert failed.error_type == "generation" and failed.error.code == 503
