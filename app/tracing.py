"""OpenTelemetry tracing: one span per generation request, off unless the environment asks.

Switched on by the standard variables: OTEL_TRACES_EXPORTER (otlp, console; "none" keeps it
off), or an OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).
OTEL_SDK_DISABLED=true turns it off whatever else is set. The rest is the SDK's to read:
OTEL_SERVICE_NAME (default here: gpt2-serve), OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER,
OTEL_EXPORTER_OTLP_PROTOCOL (http/protobuf by default, or grpc), headers, timeouts.

The opentelemetry packages are optional (the `tracing` extra): without them every method here
does nothing. A caller's W3C trace context (the traceparent header) becomes the span's parent.

The span covers the HTTP request; each engine request under it adds the events
    queued   (arrival)           prefill  (first scheduled in the worker)
    decode   (first token)       finished (outcome, tokens)
at the times they happened, rebuilt from the request's RequestRecord when it ends.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from app.engine.protocol import RequestRecord

log = logging.getLogger(__name__)

SERVICE_NAME = "gpt2-serve"


def tracing_requested(environ: Mapping[str, str]) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


class Tracing:
    """Wraps a tracer (None: disabled). Build with from_env(), or with a tracer in tests."""

    def __init__(self, tracer: Any | None = None, provider: Any | None = None) -> None:
        self._tracer = tracer
        self._provider = provider

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Tracing:
        env = os.environ if environ is None else environ
        if not tracing_requested(env):
            return cls()
        try:
            provider = _make_provider(env)
        except ImportError as exc:
            log.warning(
                "OpenTelemetry tracing was asked for (OTEL_* variables) but is not installed "
                "(%s); install gpt2-serve[tracing]. Tracing stays off.",
                exc,
            )
            return cls()
        log.info("OpenTelemetry tracing on")
        return cls(provider.get_tracer("gpt2_serve"), provider)

    def start(
        self, name: str, headers: Mapping[str, str], attributes: Mapping[str, Any]
    ) -> Any | None:
        """Start a server span whose parent is the caller's traceparent, if it sent one."""
        if self._tracer is None:
            return None
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind

        parent = extract(dict(headers))
        return self._tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=dict(attributes)
        )

    def add_record(self, span: Any | None, record: RequestRecord) -> None:
        """The queue, prefill and decode marks of one engine request, as span events."""
        if span is None:
            return
        now_mono = time.monotonic()
        offset_ns = time.time_ns() - int(now_mono * 1e9)
        t = record.timings
        arrival = now_mono - t.total

        def at(mono: float) -> int:
            return offset_ns + int(mono * 1e9)

        base = {"gpt2.engine_request_id": record.request_id}
        span.add_event(
            "queued", {**base, "gpt2.prompt_tokens": record.num_prompt_tokens}, at(arrival)
        )
        if record.prefill_seconds is not None:
            span.add_event(
                "prefill", {**base, "gpt2.queue_seconds": t.queue}, at(arrival + t.queue)
            )
        if record.num_output_tokens > 0:
            span.add_event(
                "decode",
                {
                    **base,
                    "gpt2.time_to_first_token_seconds": t.time_to_first_token,
                    "gpt2.prefill_seconds": record.prefill_seconds or 0.0,
                },
                at(arrival + t.time_to_first_token),
            )
        span.add_event(
            "finished",
            {
                **base,
                "gpt2.outcome": record.outcome,
                "gpt2.completion_tokens": record.num_output_tokens,
                "gpt2.decode_seconds": t.decode,
                "gpt2.max_inter_token_seconds": t.max_inter_token,
            },
            at(now_mono),
        )

    def end(self, span: Any | None, attributes: Mapping[str, Any], error: str | None) -> None:
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    @staticmethod
    def trace_id(span: Any | None) -> str | None:
        if span is None:
            return None
        ctx = span.get_span_context()
        return f"{ctx.trace_id:032x}" if ctx.trace_id else None

    def shutdown(self) -> None:
        """Flush what is buffered (at the end of the app's lifespan)."""
        if self._provider is not None:
            self._provider.shutdown()


def _make_provider(env: Mapping[str, str]) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {}
    named = "OTEL_SERVICE_NAME" in env or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if not named:
        attributes["service.name"] = SERVICE_NAME
    provider = TracerProvider(resource=Resource.create(attributes))
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    for name in names:
        if name and name != "none":
            provider.add_span_processor(BatchSpanProcessor(_exporter(name, env)))
    return provider


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ImportError(f"unsupported OTEL_TRACES_EXPORTER {name!r} (otlp, console, none)")
    protocol = env.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if protocol.strip().lower() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()
