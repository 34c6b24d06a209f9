"""The context window over HTTP, at its exact edge: a request whose prompt + max_tokens fills the
128-token window of the fake is served (by the real validate_request), one token more is refused
naming the field the caller sent (400 context_length_exceeded on the OpenAI routes, TGI's 422 and
wording on TGI's), and an unset max_tokens takes exactly the rest of the window."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.fakes import FakeEngineClient

WINDOW = 128  # FakeEngineClient.max_model_len; one token per byte


def test_a_completion_exactly_filling_the_window_is_served(
    client: TestClient, fake: FakeEngineClient
) -> None:
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": WINDOW - 2})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] == "stop"  # the script ended first
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": WINDOW - 1})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "max_tokens"
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_a_null_max_tokens_takes_the_rest_of_the_window_and_is_served(
    client: TestClient, fake: FakeEngineClient
) -> None:
    for prompt in ("Hi", "x" * (WINDOW - 1)):
        r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": None})
        assert r.status_code == 200, r.text
        assert len(prompt) + fake.calls[-1].params.max_tokens == WINDOW
    r = client.post("/v1/completions", json={"prompt": "x" * (WINDOW - 1), "max_tokens": None})
    assert r.json()["usage"]["completion_tokens"] == 1
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_a_prompt_filling_the_window_leaves_no_room_for_a_token(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "x" * WINDOW, "max_tokens": None})
    assert r.status_code == 400
    error = r.json()["error"]
    # Refused before tokenizing: so many bytes need at least WINDOW tokens, one more than a
    # prompt may have if one token is to be generated.
    assert error["param"] == "prompt"
    assert error["code"] == "context_length_exceeded"
    assert error["message"].startswith(
        f"This model's maximum context length is {WINDOW} tokens. However, your messages "
        f"resulted in at least {WINDOW} tokens."
    )


def test_chat_without_max_tokens_fills_the_window(
    client: TestClient, fake: FakeEngineClient
) -> None:
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200, r.text
    call = fake.calls[-1]
    assert len(call.prompt_ids) + call.params.max_tokens == WINDOW


def test_tgi_default_max_new_tokens_is_cut_to_the_window(
    client: TestClient, fake: FakeEngineClient
) -> None:
    inputs = "x" * (WINDOW - 8)
    r = client.post("/generate", json={"inputs": inputs})  # TGI's default 100 does not fit
    assert r.status_code == 200, r.text
    assert fake.calls[-1].params.max_tokens == 8
    r = client.post("/generate", json={"inputs": inputs, "parameters": {"max_new_tokens": 8}})
    assert r.status_code == 200, r.text
    r = client.post("/generate", json={"inputs": inputs, "parameters": {"max_new_tokens": 9}})
    assert r.status_code == 422
    assert r.json()["error"] == {
        "message": f"`inputs` tokens + `max_new_tokens` must be <= {WINDOW}. Given: "
        f"{WINDOW - 8} `inputs` tokens and 9 `max_new_tokens`",
        "type": "invalid_request_error",
        "param": "parameters.max_new_tokens",  # the field the caller sent, not the engine's
        "code": 422,
    }
    assert r.json()["error_type"] == "validation"


def test_chat_overflow_names_the_field_the_caller_sent(client: TestClient) -> None:
    messages = [{"role": "user", "content": "Hi"}]  # "user: Hi\nassistant:" is 19 tokens
    for field in ("max_tokens", "max_completion_tokens"):
        r = client.post("/v1/chat/completions", json={"messages": messages, field: WINDOW})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (error["param"], error["code"]) == (field, "context_length_exceeded")
        assert (
            f"However, you requested {19 + WINDOW} tokens (19 in the messages, "
            in (error["message"])
        )
