from __future__ import annotations

from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.api.conftest import sse_events
from tests.api.fakes import FakeEngineClient

HI = [{"role": "user", "content": "Hi"}]


def test_messages_render_with_the_plain_template(
    client: TestClient, fake: FakeEngineClient
) -> None:
    messages = [
        {"role": "system", "content": "Be {brief}."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Bye"}, {"type": "text", "text": "!"}],
        },
    ]
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 2})
    assert r.status_code == 200, r.text
    expected = "system: Be {brief}.\nuser: Hi\nassistant: Hello\nuser: Bye!\nassistant:"
    assert fake.calls[0].prompt_ids == list(expected.encode())


def test_custom_template(fake: FakeEngineClient) -> None:
    settings = Settings(
        model="fake-gpt2", chat_template="[{role}] {content}|", chat_generation_prompt=">"
    )
    with TestClient(create_app(settings, fake)) as client:
        client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 1})
    assert fake.calls[0].prompt_ids == list(b"[user] Hi|>")


def test_chat_completion_shape(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 4})
    body = r.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "fake-gpt2"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": " the"},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    prompt_tokens = len("user: Hi\nassistant:")
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 4,
        "total_tokens": prompt_tokens + 4,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert "server-timing" in r.headers


def test_max_tokens_fields(client: TestClient, fake: FakeEngineClient) -> None:
    client.post("/v1/chat/completions", json={"messages": HI})
    client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 5})
    client.post(
        "/v1/chat/completions",
        json={"messages": HI, "max_tokens": 5, "max_completion_tokens": 3},
    )
    prompt_len = len("user: Hi\nassistant:")
    assert [c.params.max_tokens for c in fake.calls] == [128 - prompt_len, 5, 3]


def test_chat_logprobs(client: TestClient, fake: FakeEngineClient) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={"messages": HI, "max_tokens": 2, "logprobs": True, "top_logprobs": 1},
    )
    assert fake.calls[0].params.logprobs == 1
    assert r.json()["choices"][0]["logprobs"] == {
        "content": [
            {
                "token": " ",
                "logprob": -0.5,
                "bytes": [32],
                "top_logprobs": [{"token": " ", "logprob": -0.5, "bytes": [32]}],
            },
            {
                "token": "t",
                "logprob": -0.5,
                "bytes": [116],
                "top_logprobs": [{"token": "t", "logprob": -0.5, "bytes": [116]}],
            },
        ]
    }


def test_logprobs_off_by_default(client: TestClient, fake: FakeEngineClient) -> None:
    client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 1})
    assert fake.calls[0].params.logprobs is None


def test_top_logprobs_needs_logprobs(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"messages": HI, "top_logprobs": 2})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "top_logprobs"
    assert "logprobs" in r.json()["error"]["message"]


def test_chat_validation(client: TestClient) -> None:
    cases = [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"messages": HI, "top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"messages": HI, "tools": [{"type": "function"}]}, "tools"),
        ({"messages": HI, "response_format": {"type": "json_object"}}, "response_format"),
    ]
    for body, param in cases:
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400, body
        assert r.json()["error"]["param"] == param, r.json()


def test_chat_stream(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={
            "messages": HI,
            "max_tokens": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert [chunk["choices"] for chunk in chunks] == [
        [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
        [{"index": 0, "delta": {"content": " "}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "t"}, "logprobs": None, "finish_reason": "length"}],
        [],
    ]
    prompt_tokens = len("user: Hi\nassistant:")
    assert chunks[-1]["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 2,
        "total_tokens": prompt_tokens + 2,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_chat_stream_empty_final_delta_has_no_content(client: TestClient) -> None:
    # The script ends with <|endoftext|>: its delta has no text, only finish_reason.
    r = client.post("/v1/chat/completions", json={"messages": HI, "stream": True})
    last = sse_events(r.text)[-2]
    assert last["choices"][0]["delta"] == {}
    assert last["choices"][0]["finish_reason"] == "stop"


def test_chat_n_and_seed(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions", json={"messages": HI, "max_tokens": 3, "n": 2, "seed": 1}
    )
    assert [c["message"]["content"] for c in r.json()["choices"]] == ["<1>", "<2>"]
