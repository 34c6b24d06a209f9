from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.api.conftest import sse_events
from tests.api.fakes import FakeEngineClient


def error_of(r: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The envelope's error (with error_type); `code`: OpenAI's, else the status."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "error_type"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == (code or status)
    assert r.headers["x-error-message"]
    return dict(body["error"]) | {"error_type": body["error_type"]}


def post_raw(client: TestClient, path: str, body: dict[str, Any]) -> Any:
    """json.dumps as a lax client would: NaN as NaN, a lone surrogate as its \\u escape."""
    raw = json.dumps(body).encode()
    return client.post(path, content=raw, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"temperature": "0.5"}, "temperature", "valid number, got '0.5'"),
        ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"top_p": 0}, "top_p", "greater than 0"),
        ({"n": 17}, "n", "less than or equal to 16"),
        ({"n": 1.5}, "n", "valid integer"),
        ({"n": True}, "n", "valid integer"),
        ({"max_tokens": "5"}, "max_tokens", "valid integer"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"presence_penalty": -3}, "presence_penalty", "greater than or equal to -2"),
        ({"frequency_penalty": 2.1}, "frequency_penalty", "less than or equal to 2"),
        ({"logprobs": 6}, "logprobs", "less than or equal to 5"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 items"),
        ({"stream": "yes"}, "stream", "valid boolean"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5", "less than or equal to 100"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"seed": 2**53}, "seed", "less than or equal to 9007199254740991"),
        ({"prompt": 5}, "prompt", "must be a string, a list of strings"),
        ({"prompt": [[1], "a"]}, "prompt", "must be a string"),
        ({"suffix": "x"}, "suffix", "not supported"),
        ({"best_of": 3}, "best_of", "only 1"),
        ({"timeout": 0}, "timeout", "greater than 0"),
        ({"temperature": float("nan")}, "temperature", "got nan"),
        ({"prompt": "ok \ud800"}, "prompt", "lone UTF-16 surrogate"),
        ({"prompt": ["ok", "\udc00"]}, "prompt.1", "lone UTF-16 surrogate"),
        ({"stop": ["\ud800"]}, "stop.0", "lone UTF-16 surrogate"),
    ],
)
def test_completion_validation_names_field_and_limit(
    client: TestClient, body: dict[str, Any], param: str, fragment: str
) -> None:
    error = error_of(post_raw(client, "/v1/completions", {"prompt": "Hi", **body}), 400)
    assert error["param"] == param
    assert error["message"].startswith(f"{param}: ")
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["error_type"] == "validation"


def test_lone_surrogates_in_chat_and_tgi_are_refused(client: TestClient) -> None:
    body = {"messages": [{"role": "user", "content": "\ud83d"}]}
    error = error_of(post_raw(client, "/v1/chat/completions", body), 400)
    assert error["param"] == "messages.0.content"
    error = error_of(post_raw(client, "/generate", {"inputs": "\ud83d"}), 422)
    assert error["param"] == "inputs"
    error = error_of(post_raw(client, "/tokenize", {"prompt": "\ud83d"}), 400)
    assert error["param"] == "prompt"


def test_invalid_json_is_bad_input(client: TestClient) -> None:
    r = client.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    error = error_of(r, 400)
    assert error["param"] == "body"
    assert "not valid JSON" in error["message"]


def test_undecodable_body_is_bad_input(client: TestClient) -> None:
    r = client.post(
        "/v1/completions", content=b"\xff\xfe{", headers={"content-type": "application/json"}
    )
    assert error_of(r, 400)["param"] == "body"
    r = client.post("/generate", content=b"\xff\xfe{", headers={"content-type": "application/json"})
    assert error_of(r, 422)["param"] == "body"


def test_integral_floats_count_as_integers(client: TestClient, fake: FakeEngineClient) -> None:
    r = client.post("/v1/completions", json={"prompt": [72.0, 105], "max_tokens": 2.0, "n": 1.0})
    assert r.status_code == 200, r.text
    assert fake.calls[0].prompt_ids == [72, 105]
    assert fake.calls[0].params.max_tokens == 2


def test_missing_body_is_422(client: TestClient) -> None:
    error = error_of(client.post("/generate"), 422)
    assert error["param"] == "body"


def test_unknown_route_and_method_use_the_envelope(client: TestClient) -> None:
    assert error_of(client.get("/nope"), 404)["type"] == "not_found_error"
    assert error_of(client.get("/v1/completions"), 405)["message"] == "Method Not Allowed"


def test_wrong_model_is_openais_404_model_not_found(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "x", "model": "gpt-4"})
    error = error_of(r, 404, "model_not_found")
    assert error["param"] == "model"
    assert error["type"] == "invalid_request_error"  # OpenAI's type for it; litellm reads both
    assert "'fake-gpt2'" in error["message"]
    assert client.post("/v1/completions", json={"model": "fake-gpt2"}).status_code == 200


@pytest.mark.parametrize("model", ["tgi", "dummy"])
def test_placeholder_model_names_are_the_served_model(client: TestClient, model: str) -> None:
    """TGI serves its model for "tgi", and huggingface_hub sends "dummy" when given a URL."""
    r = client.post("/v1/completions", json={"prompt": "Hi", "model": model, "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "fake-gpt2"
    chat = {"messages": [{"role": "user", "content": "Hi"}], "model": model, "max_tokens": 2}
    r = client.post("/v1/chat/completions", json=chat)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "fake-gpt2"
    assert client.post("/tokenize", json={"prompt": "Hi", "model": model}).status_code == 200


def test_overloaded_is_429_with_retry_after_from_the_drain_rate(
    client: TestClient, fake: FakeEngineClient
) -> None:
    """The real AdmissionControl refuses and computes Retry-After: 3 requests finished over the
    last 10.5 s drain one every 3.5 s, so the one request too many should come back in 4 s
    (not the 1 s floor, not a value of the fake's)."""
    now = time.monotonic()
    for ago in (10.5, 7.0, 3.5):
        fake.admission.record_finished(now - ago)
    for _ in range(fake.admission.max_in_flight):  # the batch and the queue are full
        fake.admission.admit(1)
    for stream in (False, True):
        r = client.post("/v1/completions", json={"prompt": "Hi", "stream": stream})
        error = error_of(r, 429)
        assert r.headers["retry-after"] == "4"
        assert error["error_type"] == "overloaded"
        assert error["message"] == (
            "server overloaded: 260 requests in flight, the limit is 260 "
            "(max_num_seqs + max_queued_requests); retry later"
        )
    assert fake.worker_tokens == {}  # nothing reached the worker


def test_max_queued_tokens_refuses_a_prompt_that_would_pass_it(
    settings: Settings,
) -> None:
    fake = FakeEngineClient(max_queued_tokens=10)
    with TestClient(create_app(settings, fake)) as client:
        fake.admission.admit(4)  # a request whose 4 prompt tokens wait to be scheduled
        r = client.post("/v1/completions", json={"prompt": "1234567", "max_tokens": 2})
        error = error_of(r, 429)
        assert error["message"] == (
            "server overloaded: 4 prompt tokens waiting, + 7 would pass the limit of 10 "
            "(max_queued_tokens)"
        )
        assert r.headers["retry-after"] == "1"  # nothing has finished yet: no rate known
        r = client.post("/v1/completions", json={"prompt": "123456", "max_tokens": 2})
        assert r.status_code == 200, r.text  # 4 + 6 fits exactly


def test_overloaded_choice_aborts_its_siblings(settings: Settings) -> None:
    """n=3 when only two more requests fit: the third is refused, and the two admitted ones are
    aborted in the worker, not left running."""
    fake = FakeEngineClient(max_queued_requests=0, hold_after=1)
    with TestClient(create_app(settings, fake)) as client:
        fake.admission.admit(1)
        fake.admission.admit(1)  # 2 of the 4 places taken
        r = client.post("/v1/completions", json={"prompt": "Hi", "n": 3, "stream": True})
        assert r.status_code == 429
        assert "the limit is 4" in r.json()["error"]["message"]
        assert not fake.finished
        assert len(fake.calls) == 3 and len(fake.aborted) == 2
        admitted = [c.request_id for c in fake.calls[:2]]
        assert sorted(fake.worker_aborts) == sorted(admitted)
        assert fake.worker_running == set()
        assert fake.admission.in_flight == 2  # only the two taken before


def test_not_ready_is_503(client: TestClient, fake: FakeEngineClient) -> None:
    fake.ready = False
    for path, body in (
        ("/v1/completions", {"prompt": "Hi"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
        ("/generate", {"inputs": "Hi"}),
        ("/generate_stream", {"inputs": "Hi"}),
    ):
        error = error_of(client.post(path, json=body), 503)
        assert error["error_type"] == "unavailable"


def test_engine_death_before_answer_is_503(client: TestClient, fake: FakeEngineClient) -> None:
    fake.die_after = 2
    error = error_of(client.post("/v1/completions", json={"prompt": "Hi"}), 503)
    assert "worker died" in error["message"]


def test_engine_death_mid_stream_ends_with_error_event(
    client: TestClient, fake: FakeEngineClient
) -> None:
    fake.die_after = 2
    r = client.post("/v1/completions", json={"prompt": "Hi", "stream": True})
    assert r.status_code == 200
    events = sse_events(r.text)
    assert [e["choices"][0]["text"] for e in events[:2]] == [" ", "t"]
    assert events[2]["error"]["code"] == 503
    assert "worker died" in events[2]["error"]["message"]
    assert events[3:] == ["[DONE]"]


def test_engine_death_mid_tgi_stream(client: TestClient, fake: FakeEngineClient) -> None:
    fake.die_after = 1
    r = client.post("/generate_stream", json={"inputs": "Hi"})
    events = sse_events(r.text)
    assert events[0]["token"]["text"] == " "
    assert events[1]["error_type"] == "generation"
    assert "worker died" in events[1]["error"]["message"]
    assert len(events) == 2


def test_token_ids_checked_against_vocab(client: TestClient) -> None:
    error = error_of(client.post("/detokenize", json={"tokens": [1, 999]}), 400)
    assert error["param"] == "tokens"
    error = error_of(
        client.post("/v1/completions", json={"prompt": "a", "stop_token_ids": [300]}), 400
    )
    assert error["param"] == "stop_token_ids"
