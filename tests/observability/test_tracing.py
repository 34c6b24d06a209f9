"""OpenTelemetry: one server span per generation request, the caller's traceparent as parent,
queue / prefill / decode as events; off (and import-free) unless OTEL_* variables ask."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.telemetry import Telemetry
from app.config import Settings
from app.main import create_app
from app.tracing import Tracing, tracing_requested
from tests.observability.conftest import RecordingFake

pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk not installed")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(fake: RecordingFake, exporter: InMemorySpanExporter) -> Iterator[TestClient]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(model="fake-gpt2")
    telemetry = Telemetry(
        settings, engine=lambda: fake, tracing=Tracing(provider.get_tracer("test"), provider)
    )
    app = create_app(settings, fake, telemetry=telemetry)
    fake.sink = telemetry.on_record
    with TestClient(app) as client:
        yield client


def _spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return list(exporter.get_finished_spans())


def test_one_span_per_request_child_of_the_callers_trace(
    traced: TestClient, exporter: InMemorySpanExporter
) -> None:
    r = traced.post(
        "/v1/completions",
        json={"prompt": "Hi", "max_tokens": 3},
        headers={"traceparent": TRACEPARENT, "X-Request-Id": "rid-7"},
    )
    assert r.status_code == 200
    [span] = _spans(exporter)
    assert span.name == "POST /v1/completions"
    assert span.kind == SpanKind.SERVER
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT_ID
    attrs = dict(span.attributes or {})
    assert attrs["gpt2.request_id"] == "rid-7"
    assert attrs["http.response.status_code"] == 200
    assert attrs["gpt2.completion_tokens"] == 3
    assert attrs["gpt2.finish_reason"] == "length"
    assert span.status.status_code == StatusCode.UNSET


def test_queue_prefill_and_decode_are_events_in_order(
    traced: TestClient, exporter: InMemorySpanExporter
) -> None:
    traced.post("/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 4}})
    [span] = _spans(exporter)
    events = {e.name: e for e in span.events}
    assert list(events) == ["queued", "prefill", "decode", "finished"]
    times = [e.timestamp for e in span.events]
    assert times == sorted(times)
    assert span.start_time is not None and span.end_time is not None
    assert span.start_time - 5_000_000 <= times[0] and times[-1] <= span.end_time + 5_000_000
    assert events["finished"].attributes is not None
    assert events["finished"].attributes["gpt2.outcome"] == "length"
    assert events["decode"].attributes is not None
    assert events["decode"].attributes["gpt2.time_to_first_token_seconds"] >= 0


def test_a_new_trace_without_traceparent_and_errors_marked(
    traced: TestClient, fake: RecordingFake, exporter: InMemorySpanExporter
) -> None:
    fake.die_after = 1
    traced.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 5, "stream": True})
    [span] = _spans(exporter)
    assert span.parent is None
    assert span.status.status_code == StatusCode.ERROR
    assert dict(span.attributes or {})["gpt2.outcome"] == "worker_lost"


def test_the_log_line_carries_the_trace_id(
    traced: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gpt2_serve.requests"):
        traced.post(
            "/v1/completions",
            json={"prompt": "Hi", "max_tokens": 2},
            headers={"traceparent": TRACEPARENT},
        )
    [record] = [r for r in caplog.records if r.name == "gpt2_serve.requests"]
    assert record.__dict__["trace_id"] == TRACE_ID


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}, False),
    ],
)
def test_switched_on_by_the_standard_variables(env: dict[str, str], on: bool) -> None:
    assert tracing_requested(env) is on
    tracing = Tracing.from_env(env)
    assert tracing.enabled is on
    tracing.shutdown()


def test_otlp_exporter_over_http_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from app.tracing import _exporter

    exporter: Any = _exporter("otlp", {})
    assert type(exporter).__module__.startswith("opentelemetry.exporter.otlp.proto.http")
    exporter.shutdown()


def test_without_opentelemetry_tracing_is_a_no_op(
    monkeypatch: pytest.MonkeyPatch, fake: RecordingFake
) -> None:
    for name in [m for m in sys.modules if m.startswith("opentelemetry")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import opentelemetry fails
    tracing = Tracing.from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.enabled
    settings = Settings(model="fake-gpt2")
    app = create_app(settings, fake, telemetry=Telemetry(settings, tracing=tracing))
    with TestClient(app) as client:
        r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
    assert r.status_code == 200
    assert json.loads(r.text)["usage"]["completion_tokens"] == 2
