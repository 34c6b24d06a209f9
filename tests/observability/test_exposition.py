"""/metrics: every metric the service promises, bounded labels, and `promtool check metrics`."""

from __future__ import annotations

import subprocess

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.engine.protocol import FAILURE_OUTCOMES as FAILURE_REASONS
from app.engine.protocol import SUCCESS_OUTCOMES as SUCCESS_REASONS
from app.main import create_app
from tests.observability.conftest import RecordingFake, promtool, scrape

HISTOGRAMS = (
    "gpt2_time_to_first_token_seconds",
    "gpt2_inter_token_latency_seconds",
    "gpt2_e2e_request_latency_seconds",
    "gpt2_request_queue_time_seconds",
    "gpt2_request_prefill_time_seconds",
    "gpt2_request_decode_time_seconds",
    "gpt2_engine_step_seconds",
    "gpt2_engine_step_batch_size",
    "gpt2_request_prompt_tokens",
    "gpt2_request_generation_tokens",
)
COUNTERS = (
    "gpt2_prompt_tokens",
    "gpt2_generation_tokens",
    "gpt2_prefix_cache_queries",
    "gpt2_prefix_cache_hits",
    "gpt2_num_preemptions",
    "gpt2_engine_host_seconds",
    "gpt2_request_success",
    "gpt2_request_failure",
    "gpt2_worker_restarts",
)
GAUGES = (
    "gpt2_num_requests_running",
    "gpt2_num_requests_waiting",
    "gpt2_num_requests_in_flight",
    "gpt2_kv_cache_usage_perc",
    "gpt2_batch_size",
    "gpt2_worker_up",
    "gpt2_ready",
    "gpt2_max_queued_requests",
)


def _serve_a_little(client: TestClient) -> None:
    client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3})
    client.post("/generate_stream", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}})
    client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": "x"})


def test_every_metric_is_exposed_with_its_type(client: TestClient) -> None:
    _serve_a_little(client)
    s = scrape(client)
    for name in HISTOGRAMS:
        assert s.families[name].type == "histogram", name
    for name in COUNTERS:
        assert s.families[name].type == "counter", name
        assert f"# TYPE {name}_total counter" in s.text
    for name in GAUGES:
        assert s.families[name].type == "gauge", name
    for reason in SUCCESS_REASONS:  # present at 0 before the first one: rate() works at once
        assert ("gpt2_request_success_total", (("finished_reason", reason),)) in s.samples
    for reason in FAILURE_REASONS:
        assert ("gpt2_request_failure_total", (("reason", reason),)) in s.samples


def test_labels_stay_bounded(client: TestClient, fake: RecordingFake) -> None:
    headers = {"X-Request-Id": "req-unique-12345"}
    client.post(
        "/v1/completions", json={"prompt": "secret words", "max_tokens": 3}, headers=headers
    )
    s = scrape(client)
    assert "req-unique-12345" not in s.text
    assert "secret" not in s.text
    assert not any(call.request_id in s.text for call in fake.calls)
    allowed = set(SUCCESS_REASONS) | set(FAILURE_REASONS)
    for (name, labels), _ in s.samples.items():
        if not name.startswith("gpt2_"):
            continue
        keys = {k for k, _ in labels}
        assert keys <= {"le", "finished_reason", "reason"}, (name, labels)
        for key, value in labels:
            if key != "le":
                assert value in allowed, (name, labels)


def test_buckets_come_from_the_settings(fake: RecordingFake) -> None:
    settings = Settings(model="fake-gpt2", latency_buckets=[0.001, 0.5, 30])
    with TestClient(create_app(settings, fake)) as client:
        s = scrape(client)
    les = {
        dict(labels)["le"] for (n, labels) in s.samples if n == "gpt2_engine_step_seconds_bucket"
    }
    assert les == {"0.001", "0.5", "30.0", "+Inf"}


def test_default_buckets_resolve_sub_millisecond_steps_and_minutes_long_streams() -> None:
    buckets = Settings(model="x").latency_buckets
    assert min(buckets) <= 0.0001 and max(buckets) >= 600
    assert sum(b < 0.001 for b in buckets) >= 3  # a GPU step of 0.2 ms is not in the first bucket


def test_latency_buckets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT2_LATENCY_BUCKETS", "0.0005, 0.01,2")
    assert Settings(model="x").latency_buckets == [0.0005, 0.01, 2.0]
    monkeypatch.setenv("GPT2_LATENCY_BUCKETS", "[1, 0.5]")
    with pytest.raises(ValueError, match="increasing"):
        Settings(model="x")


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0"])
def test_promtool_accepts_the_live_exposition(client: TestClient, accept: str) -> None:
    tool = promtool()
    _serve_a_little(client)
    response = client.get("/metrics", headers={"Accept": accept} if accept else {})
    assert response.status_code == 200
    if accept:
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert response.text.rstrip().endswith("# EOF")
        return  # promtool's linter reads the classic text format
    assert response.headers["content-type"].startswith("text/plain")
    result = subprocess.run(
        [tool, "check", "metrics"], input=response.text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_metrics_is_public_when_an_api_key_is_set(fake: RecordingFake) -> None:
    with TestClient(create_app(Settings(model="fake-gpt2", api_key="k"), fake)) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/v1/engine/stats").status_code == 401
