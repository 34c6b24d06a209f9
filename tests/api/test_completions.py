from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import sse_events
from tests.api.fakes import EOS, FakeEngineClient

SCRIPT = " the quick brown fox"
TIMING_KEYS = {"queue_ms", "ttft_ms", "decode_ms", "total_ms", "mean_itl_ms", "max_itl_ms"}


def assert_consistent_timings(t: dict[str, float]) -> None:
    """Timings measured by the engine client's request state: in order, never negative."""
    assert set(t) == TIMING_KEYS
    assert 0 <= t["queue_ms"] <= t["ttft_ms"] <= t["total_ms"]
    assert 0 <= t["decode_ms"] <= t["total_ms"]
    assert 0 <= t["mean_itl_ms"] <= t["max_itl_ms"] <= t["decode_ms"]


def test_completion_shape_usage_and_timing_header(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert body["model"] == "fake-gpt2"
    assert isinstance(body["created"], int)
    assert body["choices"] == [
        {"index": 0, "text": " the ", "logprobs": None, "finish_reason": "length"}
    ]
    assert body["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 5,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    t = body["timings"]
    assert_consistent_timings(t)
    assert r.headers["server-timing"] == (
        f"queue;dur={t['queue_ms']}, ttft;dur={t['ttft_ms']}, decode;dur={t['decode_ms']}, "
        f"total;dur={t['total_ms']}"
    )


def test_eos_ends_with_stop_and_counts_the_eos_token(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 50})
    choice = r.json()["choices"][0]
    assert choice["text"] == SCRIPT
    assert choice["finish_reason"] == "stop"
    assert r.json()["usage"]["completion_tokens"] == len(SCRIPT) + 1


def test_default_max_tokens_is_16(client: TestClient, fake: FakeEngineClient) -> None:
    client.post("/v1/completions", json={"prompt": "Hi"})
    assert fake.calls[0].params.max_tokens == 16


def test_null_max_tokens_means_rest_of_context(client: TestClient, fake: FakeEngineClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": None})
    assert r.status_code == 200, r.text
    assert fake.calls[0].params.max_tokens == fake.max_model_len - 2


def test_empty_and_null_prompt_start_from_endoftext(
    client: TestClient, fake: FakeEngineClient
) -> None:
    for prompt in ("", None):
        r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 2})
        assert r.status_code == 200, r.text
    r = client.post("/v1/completions", json={"max_tokens": 2})
    assert r.status_code == 200
    assert [call.prompt_ids for call in fake.calls] == [[EOS], [EOS], [EOS]]


def test_prompt_lists_and_n_number_choices_prompt_major(
    client: TestClient, fake: FakeEngineClient
) -> None:
    r = client.post(
        "/v1/completions", json={"prompt": ["ab", "xyz"], "n": 2, "max_tokens": 3, "seed": 5}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in body["choices"]] == ["<5>", "<6>", "<5>", "<6>"]
    assert [call.prompt_ids for call in fake.calls] == [
        [97, 98],
        [97, 98],
        [120, 121, 122],
        [120, 121, 122],
    ]
    # Prompt tokens count once per prompt; completion tokens for every choice.
    assert body["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 12,
        "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert len({call.request_id for call in fake.calls}) == 4


def test_token_id_prompts(client: TestClient, fake: FakeEngineClient) -> None:
    assert client.post("/v1/completions", json={"prompt": [72, 105]}).status_code == 200
    assert client.post("/v1/completions", json={"prompt": [[72], [105, 33]]}).status_code == 200
    assert [call.prompt_ids for call in fake.calls] == [[72, 105], [72], [105, 33]]


def test_token_ids_outside_vocab_are_400(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": [1, 257]})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "prompt"
    assert "[0, 257)" in r.json()["error"]["message"]


def test_seeded_choices_use_seed_plus_index(client: TestClient, fake: FakeEngineClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "Hi", "n": 3, "seed": 7, "max_tokens": 3})
    assert [c["text"] for c in r.json()["choices"]] == ["<7>", "<8>", "<9>"]
    assert [call.params.seed for call in fake.calls] == [7, 8, 9]


def test_stop_strings_are_cut_or_kept(client: TestClient, fake: FakeEngineClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 30, "stop": "quick"})
    assert r.json()["choices"][0]["text"] == " the "
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    r = client.post(
        "/v1/completions",
        json={
            "prompt": "Hi",
            "max_tokens": 30,
            "stop": ["zzz", "quick"],
            "include_stop_str_in_output": True,
        },
    )
    assert r.json()["choices"][0]["text"] == " the quick"
    assert fake.calls[-1].params.stop == ("zzz", "quick")


def test_sampling_fields_reach_the_engine(client: TestClient, fake: FakeEngineClient) -> None:
    r = client.post(
        "/v1/completions",
        json={
            "prompt": "Hello",
            "max_tokens": 4,
            "temperature": 0,
            "top_p": 0.5,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "top_k": 7,
            "min_p": 0.1,
            "repetition_penalty": 1.2,
            "ignore_eos": True,
            "min_tokens": 2,
            "stop_token_ids": [33],
            "logit_bias": {"50": 5, "60": -100},
            "timeout": 2.5,
            "truncate_prompt_tokens": 3,
        },
    )
    assert r.status_code == 200, r.text
    call = fake.calls[0]
    p = call.params
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (0.0, 0.5, 7, 0.1)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.5, -0.5, 1.2)
    assert (p.ignore_eos, p.min_tokens, p.stop_token_ids) == (True, 2, (33,))
    assert p.logit_bias == {50: 5.0, 60: -100.0}
    assert p.timeout == 2.5
    assert call.prompt_ids == list(b"llo")  # the last 3 tokens of "Hello"


def test_top_k_minus_one_means_off(client: TestClient, fake: FakeEngineClient) -> None:
    client.post("/v1/completions", json={"prompt": "Hi", "top_k": -1})
    assert fake.calls[0].params.top_k == 0


def test_logit_bias_keys_must_be_token_ids(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "Hi", "logit_bias": {"abc": 1}})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "logit_bias.abc"
    assert "should match pattern '^[0-9]+$'" in r.json()["error"]["message"]
    r = client.post("/v1/completions", json={"prompt": "Hi", "logit_bias": {"300": 1}})
    assert r.status_code == 400
    assert "token id 300 is outside the vocabulary [0, 257)" in r.json()["error"]["message"]


def test_context_overflow_is_openais_400_context_length_exceeded(client: TestClient) -> None:
    """OpenAI's (and vLLM's) status, code and wording, which litellm matches to raise its
    ContextWindowExceededError (the router's context-window fallbacks key on it)."""
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 127})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error == {
        "message": "This model's maximum context length is 128 tokens. However, you requested "
        "129 tokens (2 in the messages, 127 in the completion). Please reduce the length of the "
        "messages or completion.",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "context_length_exceeded",
    }


def test_min_tokens_above_max_tokens_is_400(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "min_tokens": 5})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "min_tokens"


def test_logprobs_legacy_object(client: TestClient, fake: FakeEngineClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3, "logprobs": 2})
    assert fake.calls[0].params.logprobs == 2
    assert r.json()["choices"][0]["logprobs"] == {
        "tokens": [" ", "t", "h"],
        "token_logprobs": [-0.5, -0.5, -0.5],
        "top_logprobs": [{" ": -0.5, "!": -1.5}, {"t": -0.5, "u": -1.5}, {"h": -0.5, "i": -1.5}],
        "text_offset": [0, 1, 2],
    }


def test_echo_prepends_prompt_and_its_tokens(client: TestClient, fake: FakeEngineClient) -> None:
    r = client.post(
        "/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "echo": True, "logprobs": 0}
    )
    assert fake.calls[0].params.prompt_logprobs == 0  # echo + logprobs scores the prompt
    choice = r.json()["choices"][0]
    assert choice["text"] == "Hi t"
    assert choice["logprobs"] == {
        "tokens": ["H", "i", " ", "t"],
        "token_logprobs": [None, -0.25, -0.5, -0.5],  # nothing predicts the first token
        "top_logprobs": [None, {}, {}, {}],
        "text_offset": [0, 1, 2, 3],
    }


def test_vllm_prompt_logprobs_per_prompt_token(client: TestClient, fake: FakeEngineClient) -> None:
    r = client.post(
        "/v1/completions",
        json={"prompt": "Hi!", "max_tokens": 1, "prompt_logprobs": 2, "echo": True, "logprobs": 1},
    )
    assert fake.calls[0].params.prompt_logprobs == 2  # the larger of the two asks
    choice = r.json()["choices"][0]
    assert choice["prompt_logprobs"] == [
        None,
        {
            "105": {"logprob": -0.25, "rank": 1, "decoded_token": "i"},
            "106": {"logprob": -1.25, "rank": 2, "decoded_token": "j"},
        },
        {
            "33": {"logprob": -0.25, "rank": 1, "decoded_token": "!"},
            "34": {"logprob": -1.25, "rank": 2, "decoded_token": '"'},
        },
    ]
    # echo's own top_logprobs keep to logprobs=1
    assert choice["logprobs"]["top_logprobs"][:3] == [None, {"i": -0.25}, {"!": -0.25}]


def test_vllm_prompt_logprobs_refused_when_streaming(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "Hi", "prompt_logprobs": 1, "stream": True})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "prompt_logprobs"
    assert "stream" in r.json()["error"]["message"]


def test_prompt_is_scored_only_when_echoed_with_logprobs(
    client: TestClient, fake: FakeEngineClient
) -> None:
    client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1, "logprobs": 1})
    client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1, "echo": True})
    assert [c.params.prompt_logprobs for c in fake.calls] == [None, None]


def test_stream_chunks_usage_and_done(client: TestClient) -> None:
    r = client.post(
        "/v1/completions",
        json={
            "prompt": "Hi",
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-accel-buffering"] == "no"
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    ids = {chunk["id"] for chunk in chunks}
    assert len(ids) == 1 and ids.pop().startswith("cmpl-")
    assert all(chunk["object"] == "text_completion" for chunk in chunks)
    assert [chunk["choices"] for chunk in chunks] == [
        [{"index": 0, "text": " ", "logprobs": None, "finish_reason": None}],
        [{"index": 0, "text": "t", "logprobs": None, "finish_reason": None}],
        [{"index": 0, "text": "h", "logprobs": None, "finish_reason": "length"}],
        [],
    ]
    assert_consistent_timings(chunks[2]["timings"])
    assert chunks[3]["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 3,
        "total_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_stream_without_usage_ends_with_finish_then_done(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "stream": True})
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert "usage" not in events[-2]


def test_stream_echo_and_logprob_offsets(client: TestClient) -> None:
    r = client.post(
        "/v1/completions",
        json={"prompt": "Hi", "max_tokens": 2, "stream": True, "echo": True, "logprobs": 1},
    )
    chunks = sse_events(r.text)[:-1]
    first, second = (chunk["choices"][0] for chunk in chunks)
    assert first["text"] == "Hi "
    assert first["logprobs"]["tokens"] == ["H", "i", " "]
    assert first["logprobs"]["token_logprobs"] == [None, -0.25, -0.5]
    assert first["logprobs"]["top_logprobs"] == [None, {"i": -0.25}, {" ": -0.5}]
    assert first["logprobs"]["text_offset"] == [0, 1, 2]
    assert second["text"] == "t"
    assert second["logprobs"]["text_offset"] == [3]


def test_stream_n_choices_each_finish(client: TestClient) -> None:
    r = client.post(
        "/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "n": 2, "stream": True}
    )
    chunks = sse_events(r.text)[:-1]
    finishes = {
        chunk["choices"][0]["index"]: chunk["choices"][0]["finish_reason"]
        for chunk in chunks
        if chunk["choices"][0]["finish_reason"]
    }
    assert finishes == {0: "length", 1: "length"}
    text = {0: "", 1: ""}
    for chunk in chunks:
        text[chunk["choices"][0]["index"]] += chunk["choices"][0]["text"]
    assert text == {0: " t", 1: " t"}


def test_utf8_is_never_split(client: TestClient, fake: FakeEngineClient) -> None:
    fake.script = " café ☕"
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 50, "stream": True})
    pieces = [e["choices"][0]["text"] for e in sse_events(r.text)[:-1]]
    assert "".join(pieces) == " café ☕"
    assert all("\ufffd" not in piece for piece in pieces)
    assert "☕" in pieces  # three byte-tokens, one piece


@pytest.mark.parametrize(
    ("path", "body", "text_of", "expected"),
    [
        (
            "/v1/completions",
            {"prompt": "Hi", "max_tokens": 50, "stream": True, "stop": ["brown"]},
            lambda e: e["choices"][0]["text"] if e["choices"] else "",
            " the quick ",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Hi"}], "stream": True, "stop": "brown"},
            lambda e: e["choices"][0]["delta"].get("content") or "" if e["choices"] else "",
            " the quick ",
        ),
        (
            "/generate_stream",
            {"inputs": "Hi", "parameters": {"max_new_tokens": 50, "stop": ["brown"]}},
            lambda e: e["token"]["text"],
            " the quick brown",  # TGI keeps the stop sequence
        ),
    ],
    ids=["completions", "chat", "tgi"],
)
def test_a_stop_string_is_never_streamed_in_part(
    client: TestClient, fake: FakeEngineClient, path: str, body: Any, text_of: Any, expected: str
) -> None:
    """ "brown" is five byte-tokens: "b", "br", ... arrive before it completes and must be held
    back by the real detokenizer, so no chunk ever shows a piece of it (except where TGI keeps
    the stop sequence in the text, all of it at once)."""
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    events = [e for e in sse_events(r.text) if isinstance(e, dict)]
    pieces = [text_of(e) for e in events]
    assert "".join(pieces) == expected
    streamed = ""
    for piece in pieces:
        streamed += piece
        assert not streamed.endswith(("b", "br", "bro", "brow")), pieces
    [call] = fake.calls
    assert fake.worker_aborts == [call.request_id]  # the worker was told to stop at once
    assert fake.worker_tokens[call.request_id] == len(" the quick brown")


@pytest.mark.parametrize("route", ["completions", "chat"])
def test_usage_reports_the_prompt_tokens_served_from_the_prefix_cache(
    client: TestClient, fake: FakeEngineClient, route: str
) -> None:
    """OpenAI's usage.prompt_tokens_details.cached_tokens: what the worker reported with the
    request's first token, in the JSON answer and in the stream's usage chunk."""
    fake.cached_tokens = 16
    long_prompt = "x" * 40  # 40 tokens in the fake's byte tokenizer
    body: dict[str, Any] = {"max_tokens": 3}
    path = "/v1/chat/completions" if route == "chat" else "/v1/completions"
    if route == "chat":
        body["messages"] = [{"role": "user", "content": long_prompt}]
    else:
        body["prompt"] = long_prompt
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 16}
    r = client.post(path, json={**body, "stream": True, "stream_options": {"include_usage": True}})
    usage = sse_events(r.text)[-2]["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 16}
    assert usage["prompt_tokens"] > 16
