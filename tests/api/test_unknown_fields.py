"""Fields nobody documents are refused, naming them; documented ones we ignore are logged once.

A misspelt `max_token` used to be dropped silently (the answer then had the default 16 tokens);
OpenAI answers 400 "Unrecognized request argument supplied: max_token", and so does this
server, on every route (TGI's with their 422)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.schemas import known_fields
from tests.api.fakes import FakeEngineClient

HI = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("path", "body", "status", "names"),
    [
        ("/v1/completions", {"prompt": "Hi", "max_token": 4}, 400, ["max_token"]),
        ("/v1/chat/completions", {"messages": HI, "max_token": 4}, 400, ["max_token"]),
        ("/v1/completions", {"prompt": "Hi", "foo": 1, "bar": None}, 400, ["foo", "bar"]),
        ("/tokenize", {"prompt": "Hi", "add_bos": True}, 400, ["add_bos"]),
        ("/generate", {"inputs": "Hi", "max_new_tokens": 4}, 422, ["max_new_tokens"]),
        (
            "/generate_stream",
            {"inputs": "Hi", "parameters": {"max_token": 4}},
            422,
            ["parameters.max_token"],
        ),
        ("/", {"inputs": "Hi", "parameters": {"temp": 1}}, 422, ["parameters.temp"]),
        (
            "/v1/completions",
            {"prompt": "Hi", "stream": True, "stream_options": {"usage": True}},
            400,
            ["stream_options.usage"],
        ),
    ],
)
def test_unknown_fields_are_refused_by_name(
    client: TestClient,
    fake: FakeEngineClient,
    path: str,
    body: dict[str, Any],
    status: int,
    names: list[str],
) -> None:
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    plural = "s" if len(names) > 1 else ""
    assert error["message"] == f"Unrecognized request argument{plural} supplied: {', '.join(names)}"
    assert error["param"] == names[0]
    assert error["type"] == "invalid_request_error"
    assert fake.calls == []


def test_an_unknown_name_with_control_characters_still_gets_its_answer(client: TestClient) -> None:
    """The name goes into the X-Error-Message header too, as printable text: a control
    character there would make the HTTP layer drop the connection instead (schemathesis)."""
    r = client.post("/v1/completions", json={"prompt": "Hi", "\x1b\b": None})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "Unrecognized request argument supplied: \x1b\b"
    assert r.headers["x-error-message"] == "Unrecognized request argument supplied: ??"


def test_an_unknown_field_is_named_beside_other_errors(client: TestClient) -> None:
    r = client.post("/generate", json={"inputs": "Hi", "parameters": {"tmp": 1, "top_k": 0}})
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert message.startswith("Unrecognized request argument supplied: parameters.tmp")


def test_documented_fields_we_do_not_implement_are_accepted_and_logged_once(
    client: TestClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(known_fields, "_logged", set())  # as in a fresh process
    chat = {
        "messages": HI,
        "max_tokens": 2,
        "store": True,
        "metadata": {"a": "b"},
        "service_tier": "auto",
        "parallel_tool_calls": False,
        "tool_choice": "none",
        "tool_prompt": "TGI's",
        "modalities": ["text"],
        "reasoning_effort": None,  # null: nothing asked for, nothing to log
    }
    with caplog.at_level(logging.INFO, logger=known_fields.__name__):
        for _ in range(3):
            r = client.post("/v1/chat/completions", json=chat)
            assert r.status_code == 200, r.text
        r = client.post("/generate", json={"inputs": "Hi", "add_special_tokens": False})
        assert r.status_code == 200, r.text
        streamed = {
            "prompt": "Hi",
            "max_tokens": 1,
            "stream": True,
            "stream_options": {"include_usage": True, "include_obfuscation": False},
        }
        assert client.post("/v1/completions", json=streamed).status_code == 200
    logged = [r.getMessage() for r in caplog.records if r.name == known_fields.__name__]
    fields = sorted(message.split("'")[1] for message in logged)
    assert fields == sorted(
        [
            "store",
            "metadata",
            "service_tier",
            "parallel_tool_calls",
            "tool_choice",
            "tool_prompt",
            "modalities",
            "add_special_tokens",
            "include_obfuscation",
        ]
    )
    assert all("accepted and ignored" in message for message in logged)


def test_functions_are_refused_like_tools(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"messages": HI, "functions": [{"name": "f"}]})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "functions"
    r = client.post("/v1/chat/completions", json={"messages": HI, "functions": [], "max_tokens": 1})
    assert r.status_code == 200


def test_openai_documented_chat_fields_are_all_known() -> None:
    """Every field of the openai client's chat and completions parameters is declared or
    accepted, so the client never gets "unrecognized" for a field it documents."""
    from openai.types import completion_create_params
    from openai.types.chat import completion_create_params as chat_params

    from app.api.schemas import ChatCompletionRequest, CompletionRequest

    for request, params in (
        (ChatCompletionRequest, chat_params.CompletionCreateParamsBase),
        (CompletionRequest, completion_create_params.CompletionCreateParamsBase),
    ):
        known = request.model_fields.keys() | request.accepted_unused
        assert set(params.__annotations__) - known == set(), request.__name__
