"""The service end to end over real HTTP: official clients, streaming, stop strings, n,
deadlines, disconnects, a killed worker. Real worker process, tiny random GPT-2.

Where timing would decide the outcome (a deadline, a disconnect racing the end of a
generation), the worker is paused (tests/processes.py) and what the engine did is read from its
own state (/v1/engine/stats: sequences running, KV slots used), never from the wall clock."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import httpx
import pytest
import torch
from transformers import GPT2LMHeadModel

from tests.e2e.server import Server
from tests.processes import paused
from tests.stops import spanning_stop


def _sse(response: httpx.Response) -> list[Any]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def _complete(server: Server, **body: Any) -> dict[str, Any]:
    r = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _stream(server: Server, path: str, body: dict[str, Any]) -> list[Any]:
    with httpx.stream("POST", server.url + path, json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        return _sse(r)


def _wait(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_openai_client_completions_and_chat(server: Server) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    model = client.models.list().data[0].id
    done = client.completions.create(
        model=model, prompt="Hello 😀 世界", max_tokens=12, temperature=0
    )
    streamed = client.completions.create(
        model=model,
        prompt="Hello 😀 世界",
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(streamed)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == done.choices[0].text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == done.usage.completion_tokens
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
    )
    chat_stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    deltas = [c.choices[0].delta.content or "" for c in chat_stream if c.choices]
    assert "".join(deltas) == chat.choices[0].message.content


def test_prompt_logprobs_over_http_equal_transformers(
    server: Server, hf_model: GPT2LMHeadModel
) -> None:
    """Scoring a text, as lm-eval-harness does through OpenAI's API (echo + logprobs) and
    through TGI's decoder_input_details: each prompt token's logprob is transformers'."""
    prompt = "The quick brown fox jumps over the lazy dog"
    ids = httpx.post(server.url + "/tokenize", json={"prompt": prompt}, timeout=10).json()["tokens"]
    with torch.inference_mode():
        ref = hf_model(torch.tensor([ids])).logits[0].log_softmax(-1)
    want = [float(ref[i - 1, ids[i]]) for i in range(1, len(ids))]
    body = _complete(server, prompt=prompt, max_tokens=1, echo=True, logprobs=2, temperature=0)
    scored = body["choices"][0]["logprobs"]
    assert scored["token_logprobs"][0] is None and scored["top_logprobs"][0] is None
    assert scored["token_logprobs"][1 : len(ids)] == pytest.approx(want, abs=1e-4)
    assert all(len(top) == 2 for top in scored["top_logprobs"][1:])
    vllm_style = _complete(server, prompt=prompt, max_tokens=1, prompt_logprobs=0)
    per_token = vllm_style["choices"][0]["prompt_logprobs"]
    assert per_token[0] is None
    assert [e[str(t)]["logprob"] for e, t in zip(per_token[1:], ids[1:], strict=True)] == (
        pytest.approx(want, abs=1e-4)
    )
    tgi = httpx.post(
        server.url + "/generate",
        json={
            "inputs": prompt,
            "parameters": {"max_new_tokens": 1, "details": True, "decoder_input_details": True},
        },
        timeout=60,
    ).json()
    prefill = tgi["details"]["prefill"]
    assert [t["id"] for t in prefill] == ids
    assert prefill[0]["logprob"] is None
    assert [t["logprob"] for t in prefill[1:]] == pytest.approx(want, abs=1e-4)


def test_streamed_equals_non_streamed_equals_decode_of_tokens(server: Server) -> None:
    body = {
        "inputs": "日本語のテキスト and emoji 🎉",
        "parameters": {"max_new_tokens": 32, "details": True, "do_sample": False},
    }
    r = httpx.post(server.url + "/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    result = r.json()
    ids = [t["id"] for t in result["details"]["tokens"]]
    decoded = httpx.post(server.url + "/detokenize", json={"tokens": ids}, timeout=10).json()
    assert decoded["prompt"] == result["generated_text"]
    events = _stream(server, "/generate_stream", body)
    assert events[-1]["generated_text"] == result["generated_text"]
    assert [e["token"]["id"] for e in events] == ids
    oa = _stream(
        server,
        "/v1/completions",
        {"prompt": body["inputs"], "max_tokens": 32, "temperature": 0, "stream": True},
    )
    assert oa[-1] == "[DONE]"
    pieces = [e["choices"][0]["text"] for e in oa[:-1] if e["choices"]]
    assert "".join(pieces) == result["generated_text"]
    if "\ufffd" not in result["generated_text"]:
        assert not any("\ufffd" in p for p in pieces), "a stream piece split a UTF-8 character"


def test_huggingface_inference_client_streams_with_details(server: Server) -> None:
    hub = pytest.importorskip("huggingface_hub")
    client = hub.InferenceClient(server.url)
    full = client.text_generation("The cat", max_new_tokens=10, details=True)
    stream = list(client.text_generation("The cat", max_new_tokens=10, details=True, stream=True))
    assert stream[-1].generated_text == full.generated_text
    assert [s.token.id for s in stream] == [t.id for t in full.details.tokens]
    assert full.details.generated_tokens == 10


def _stream_texts(server: Server, **body: Any) -> tuple[list[str], dict[str, Any]]:
    events = _stream(server, "/v1/completions", {**body, "stream": True})
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    return [c["choices"][0]["text"] for c in chunks], chunks[-1]["choices"][0]


def test_stop_string_spanning_tokens_is_cut_and_never_leaked(server: Server) -> None:
    body = {"prompt": "Stop strings", "max_tokens": 40, "temperature": 0, "ignore_eos": True}
    pieces, _ = _stream_texts(server, **body)  # a chunk per token
    stop, at = spanning_stop(pieces)  # its first half arrives one token before the rest
    expected = "".join(pieces)[:at]
    choice = _complete(server, **body, stop=[stop])["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == (expected, "stop")
    streamed, last = _stream_texts(server, **body, stop=[stop])
    assert "".join(streamed) == expected  # no chunk carried the stop string's first half
    assert last["finish_reason"] == "stop"


def test_a_character_split_across_tokens_is_streamed_whole(server: Server) -> None:
    """😀 is two GPT-2 tokens (its first three bytes, then the last). A logit bias limits the
    greedy choice to those two, and the penalties make them alternate: the model writes 😀
    as two tokens, and no chunk may carry half of it."""
    ids = httpx.post(server.url + "/tokenize", json={"prompt": "😀"}, timeout=10).json()["tokens"]
    assert len(ids) == 2
    body = {
        "prompt": "Emoji:",
        "max_tokens": 2,
        "temperature": 0,
        "ignore_eos": True,
        "logit_bias": {str(t): 100 for t in ids},
        "frequency_penalty": 2.0,
        "presence_penalty": 2.0,
        "logprobs": 0,
    }
    choice = _complete(server, **body)["choices"][0]
    assert choice["text"] == "😀" and choice["logprobs"]["tokens"] == [
        "bytes:\\xf0\\x9f\\x98",
        "bytes:\\x80",
    ]
    pieces, last = _stream_texts(server, **body)
    assert pieces == ["", "😀"]  # held until whole, then sent at once
    assert last["finish_reason"] == "length"


def test_n_choices_with_seed_are_reproducible(server: Server) -> None:
    body = {
        "prompt": "Many",
        "max_tokens": 10,
        "n": 3,
        "seed": 7,
        "temperature": 1.0,
        "ignore_eos": True,
    }
    first, second = _complete(server, **body), _complete(server, **body)
    texts = [c["text"] for c in sorted(first["choices"], key=lambda c: c["index"])]
    assert texts == [c["text"] for c in sorted(second["choices"], key=lambda c: c["index"])]
    assert len(set(texts)) > 1
    assert first["usage"]["completion_tokens"] == 30


def _engine_idle_after_a_sentinel(server: Server) -> dict[str, Any]:
    """Send a one-token request and return the engine's state as of the step that ended it.
    The worker applies commands in order, so everything sent before the sentinel (an abort
    included) has been applied by then: a request still running shows in num_running."""
    _complete(server, prompt="sentinel", max_tokens=1)
    return server.stats()


def test_deadline_ends_the_request_and_the_engine_drops_it(server: Server) -> None:
    """The worker is paused: the 0.5 s deadline passes before any token, whatever the speed of
    the machine. The request ends with "timeout", and its abort reached the worker."""
    with paused(server.worker_pid):
        choice = _complete(server, prompt="slow", max_tokens=1000, ignore_eos=True, timeout=0.5)
    assert choice["choices"][0]["finish_reason"] == "timeout"
    assert choice["usage"]["completion_tokens"] == 0
    stats = _engine_idle_after_a_sentinel(server)
    assert (stats["num_running"], stats["kv_blocks_used"], stats["requests_in_flight"]) == (0, 0, 0)


def test_client_disconnect_aborts_the_request_in_the_engine(server: Server) -> None:
    """The client leaves while the worker is paused (its headers and keep-alives come after a
    second, without a token). Once the service has let the request go, the worker resumes: it
    must drop the request at once, not generate its 1,000 tokens (it would still be running
    when the sentinel after it ends)."""
    with paused(server.worker_pid):
        with httpx.stream(
            "POST",
            server.url + "/v1/completions",
            timeout=60,
            json={"prompt": "long", "max_tokens": 1000, "ignore_eos": True, "stream": True},
        ) as r:
            assert r.status_code == 200
            assert server.stats()["requests_in_flight"] == 1
        _wait(lambda: server.stats()["requests_in_flight"] == 0)
    stats = _engine_idle_after_a_sentinel(server)
    assert (stats["num_running"], stats["kv_blocks_used"], stats["requests_in_flight"]) == (0, 0, 0)


def test_bad_input_is_a_4xx_naming_the_field(server: Server) -> None:
    r = httpx.post(
        server.url + "/v1/completions", timeout=10, json={"prompt": [1] * 1000, "max_tokens": 100}
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["param"], error["code"]) == ("max_tokens", "context_length_exceeded")
    assert "This model's maximum context length is 1024 tokens" in error["message"]
    r = httpx.post(
        server.url + "/v1/completions", timeout=10, json={"prompt": "x", "max_tokens": "12"}
    )
    assert r.status_code == 400 and "max_tokens" in r.text
    r = httpx.post(
        server.url + "/generate",
        timeout=10,
        json={"inputs": "x", "parameters": {"max_new_tokens": 1024}},
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == "parameters.max_new_tokens"


def test_killed_worker_ends_streams_with_an_error_then_recovers(server: Server) -> None:
    pid = httpx.get(server.url + "/v1/engine/stats", timeout=10).json()["worker_pid"]
    with httpx.stream(
        "POST",
        server.url + "/v1/completions",
        timeout=60,
        json={"prompt": "doomed", "max_tokens": 1000, "ignore_eos": True, "stream": True},
    ) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                break
        os.kill(pid, signal.SIGKILL)
        rest = [
            json.loads(line[6:]) if line != "data: [DONE]" else "[DONE]"
            for line in lines
            if line.startswith("data: ")
        ]
    assert any(isinstance(e, dict) and "error" in e for e in rest), rest[-3:]
    assert rest[-1] == "[DONE]"
    _wait(lambda: httpx.get(server.url + "/ready", timeout=10).status_code == 200, timeout=90)
    stats = httpx.get(server.url + "/v1/engine/stats", timeout=10).json()
    assert stats["worker_restarts"] == 1 and stats["worker_pid"] != pid
    again = _complete(server, prompt="again", max_tokens=4, ignore_eos=True)
    assert again["choices"][0]["finish_reason"] == "length"
    assert again["usage"]["completion_tokens"] == 4


def _assert_close(got: Any, want: Any, path: str = "") -> None:
    """Equal structures, strings and ints; floats within 1e-4."""
    if isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-4), path
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), path
        for key in want:
            _assert_close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_close(g, w, f"{path}[{i}]")
    else:
        assert got == want, path


def test_async_scheduling_serves_the_tokens_of_one_step_at_a_time(
    server: Server,
    tiny_model_dir: Any,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker that launches each step before the previous one's tokens are known
    (--async-scheduling) answers six concurrent requests (greedy, logprobs, stop tokens,
    n=2) as the default worker does, and streams what it answers."""
    from concurrent.futures import ThreadPoolExecutor

    bodies: list[dict[str, Any]] = [
        {"prompt": f"Request {i} says", "max_tokens": 12 + i, "temperature": 0} for i in range(4)
    ]
    bodies[1] |= {"logprobs": 2}
    bodies[2] |= {"n": 2}
    bodies.append({"prompt": [50, 51, 52], "max_tokens": 20, "temperature": 0, "stop": ["e"]})
    bodies.append({"prompt": "One", "max_tokens": 1, "temperature": 0})
    monkeypatch.setenv("GPT2_ASYNC_SCHEDULING", "true")
    ahead = Server(tiny_model_dir, tmp_path / "ahead.log", max_num_seqs=4)
    try:
        with ThreadPoolExecutor(len(bodies)) as pool:
            want = list(pool.map(lambda body: _complete(server, **body)["choices"], bodies))
            got = list(pool.map(lambda body: _complete(ahead, **body)["choices"], bodies))
        # The same tokens; a logprob may differ in its last bits, as a row's may between
        # batches of different sizes (which two servers under one load do not share).
        _assert_close(got, want)
        events = _stream(ahead, "/v1/completions", {**bodies[0], "stream": True})
        text = "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"])
        assert text == want[0][0]["text"]
    finally:
        assert ahead.stop() == 0, ahead.log_path.read_text()[-3000:]
