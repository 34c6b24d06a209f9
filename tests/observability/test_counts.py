"""The metrics agree with what was served: requests, tokens, and failures by reason, each
request counted once (over the fake engine; tests/observability/test_real_engine.py does the
same over the real one)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import sse_events
from tests.observability.conftest import RecordingFake, Scrape, delta, scrape, wait_until

OUTCOMES = ("gpt2_request_success_total", "gpt2_request_failure_total")


def _served(before: Scrape, after: Scrape) -> float:
    return sum(after.total(n) - before.total(n) for n in OUTCOMES)


def _completion_tokens(client: TestClient, kind: str, max_tokens: int) -> int:
    """Run one request of the given kind and return the completion tokens its answer reports."""
    if kind == "completion":
        r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": max_tokens})
        assert r.status_code == 200, r.text
        return int(r.json()["usage"]["completion_tokens"])
    if kind == "completion_stream":
        body = {
            "prompt": "Hi",
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        r = client.post("/v1/completions", json=body)
        usage = [e for e in sse_events(r.text) if isinstance(e, dict) and e.get("usage")]
        return int(usage[-1]["usage"]["completion_tokens"])
    if kind == "chat":
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": max_tokens}
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return int(r.json()["usage"]["completion_tokens"])
    if kind == "generate":
        body = {"inputs": "Hi", "parameters": {"max_new_tokens": max_tokens, "details": True}}
        r = client.post("/generate", json=body)
        assert r.status_code == 200, r.text
        return int(r.json()["details"]["generated_tokens"])
    assert kind == "generate_stream"
    body = {"inputs": "Hi", "parameters": {"max_new_tokens": max_tokens}}
    events = sse_events(client.post("/generate_stream", json=body).text)
    return int(events[-1]["details"]["generated_tokens"])


def test_counts_agree_with_what_was_served(client: TestClient) -> None:
    kinds = ["completion", "completion_stream", "chat", "generate", "generate_stream"]
    before = scrape(client)
    served = [_completion_tokens(client, kind, 3 + 20 * (i % 2)) for i, kind in enumerate(kinds)]
    after = scrape(client)
    n = len(kinds)
    assert delta(before, after, "gpt2_time_to_first_token_seconds_count") == n
    assert delta(before, after, "gpt2_e2e_request_latency_seconds_count") == n
    assert delta(before, after, "gpt2_generation_tokens_total") == sum(served)
    assert delta(before, after, "gpt2_request_generation_tokens_sum") == sum(served)
    # Inter-token gaps: one fewer than the tokens of each request.
    assert delta(before, after, "gpt2_inter_token_latency_seconds_count") == sum(served) - n
    # The fake's script is 20 tokens + EOS: max_tokens 3 ends by length, 23 by EOS (stop).
    assert delta(before, after, "gpt2_request_success_total", finished_reason="length") == 3
    assert delta(before, after, "gpt2_request_success_total", finished_reason="stop") == 2
    assert after.total("gpt2_request_failure_total") == 0
    # "Hi" is two prompt tokens for the fake; chat renders a template around it.
    assert delta(before, after, "gpt2_prompt_tokens_total") >= 2 * n


def _post(client: TestClient, path: str, body: dict[str, Any]) -> int:
    return client.post(path, json=body).status_code


@pytest.mark.parametrize(
    ("setup", "path", "body", "status", "reason"),
    [
        (None, "/v1/completions", {"prompt": "Hi", "max_tokens": "x"}, 400, "validation"),
        (
            None,
            "/generate",
            {"inputs": "Hi", "parameters": {"max_new_tokens": 0}},
            422,
            "validation",
        ),
        # The engine refuses it: prompt + max_tokens over the fake's 128-token window.
        (None, "/v1/completions", {"prompt": "Hi" * 60, "max_tokens": 20}, 400, "validation"),
        ("overloaded", "/v1/completions", {"prompt": "Hi", "max_tokens": 3}, 429, "overloaded"),
        (
            "overloaded",
            "/v1/completions",
            {"prompt": "Hi", "max_tokens": 3, "stream": True},
            429,
            "overloaded",
        ),
        ("not_ready", "/generate", {"inputs": "Hi"}, 503, "unavailable"),
        ("dies", "/v1/completions", {"prompt": "Hi", "max_tokens": 10}, 503, "worker_lost"),
        # Dies mid-stream: 200 and an error event; the engine reports worker_lost.
        (
            "dies",
            "/v1/completions",
            {"prompt": "Hi", "max_tokens": 10, "stream": True},
            200,
            "worker_lost",
        ),
        (
            "slow",
            "/v1/completions",
            {"prompt": "Hi", "max_tokens": 50, "timeout": 0.05},
            200,
            "timeout",
        ),
        ("broken", "/v1/completions", {"prompt": "Hi", "max_tokens": 3}, 500, "internal"),
    ],
)
def test_each_failure_counts_once_under_its_reason(
    client: TestClient,
    fake: RecordingFake,
    monkeypatch: pytest.MonkeyPatch,
    setup: str | None,
    path: str,
    body: dict[str, Any],
    status: int,
    reason: str,
) -> None:
    if setup == "overloaded":
        fake.overloaded = True
    elif setup == "not_ready":
        fake.ready = False
    elif setup == "dies":
        fake.die_after = 2
    elif setup == "slow":
        fake.token_delay = 0.02
    elif setup == "broken":
        import app.api.routes.completions as completions

        def broken(*args: object) -> object:
            raise RuntimeError("a bug")

        monkeypatch.setattr(completions, "fold", broken)
    before = scrape(client)
    assert _post(client, path, body) == status
    after = scrape(client)
    assert delta(before, after, "gpt2_request_failure_total", reason=reason) == 1
    assert _served(before, after) == 1, "counted once, under one reason"


def test_client_disconnect_counts_as_disconnected(client: TestClient, fake: RecordingFake) -> None:
    fake.hold_after = 1  # then the request can only end by the disconnect
    fake.script = "x" * 200
    before = scrape(client)
    body = {"prompt": "Hi", "max_tokens": 100, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as r:
        assert next(r.iter_lines()).startswith("data: ")

    def counted() -> bool:
        return (
            delta(before, scrape(client), "gpt2_request_failure_total", reason="disconnected") == 1
        )

    wait_until(counted, what="the disconnect to be counted")
    after = scrape(client)
    assert _served(before, after) == 1
    assert after.value("gpt2_request_success_total", finished_reason="abort") == 0


def test_rejected_choice_is_one_failure_not_a_disconnect_of_its_siblings(
    client: TestClient, fake: RecordingFake
) -> None:
    """n=2 where the engine dies after admitting both: worker_lost for each engine request."""
    fake.die_after = 1
    before = scrape(client)
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 5, "n": 2})
    assert r.status_code == 503
    after = scrape(client)
    assert delta(before, after, "gpt2_request_failure_total", reason="worker_lost") >= 1
    assert delta(before, after, "gpt2_request_failure_total", reason="disconnected") == 0
    assert delta(before, after, "gpt2_request_failure_total", reason="unavailable") == 0


def test_non_generation_routes_are_not_counted(client: TestClient) -> None:
    before = scrape(client)
    assert client.post("/tokenize", json={"x": 1}).status_code == 400
    assert client.get("/v1/models").status_code == 200
    after = scrape(client)
    assert _served(before, after) == 0


def test_gauges_read_zero_without_work(client: TestClient) -> None:
    s = scrape(client)
    for name in (
        "gpt2_num_requests_running",
        "gpt2_num_requests_waiting",
        "gpt2_batch_size",
        "gpt2_kv_cache_usage_perc",
        "gpt2_worker_restarts_total",
    ):
        assert s.value(name) == 0, name
    assert s.value("gpt2_ready") == 1
