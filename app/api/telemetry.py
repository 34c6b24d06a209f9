"""Where metrics, the request log and tracing meet the HTTP layer.

TelemetryMiddleware follows each generation request (POST to a generation route) from arrival to
the last byte of its answer; AsyncEngine's sinks (on_step, on_record) feed Telemetry as the
worker reports. When a request ends, Telemetry counts its outcome once, writes its log line and
ends its span.

Counting a request once: the engine reports every request it saw (RequestRecord.outcome); the
HTTP layer sees requests refused before the engine had them (422, 429, 503) and its own bugs
(500). So, per HTTP request:
- engine failures (validation, timeout, worker_lost, shutdown) count by their outcome, and the
  other engine requests of the same HTTP request (n > 1) that finished count as successes;
- else, if the HTTP request failed, that failure counts once and nothing else does (engine
  requests cut short by it, e.g. siblings of a refused choice reported "disconnected", or work
  finished for an answer that then failed to build, do not count again);
- else each engine request counts: finished ones as successes (stop, length, abort), those the
  caller left as disconnected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.request_context import RequestContext, bind, reason_for_status, unbind
from app.config import Settings
from app.engine.engine_client import EngineClient
from app.engine.protocol import (
    ENGINE_FAILURES,
    ENGINE_FINISHED,
    Outcome,
    RequestRecord,
    StepStats,
)
from app.metrics import Metrics
from app.request_log import log_finished
from app.tracing import Tracing

logger = logging.getLogger(__name__)

GENERATION_PATHS = frozenset(
    {"/v1/completions", "/v1/chat/completions", "/generate", "/generate_stream", "/"}
)


class Telemetry:
    def __init__(
        self,
        settings: Settings,
        engine: Callable[[], EngineClient | None] = lambda: None,
        tracing: Tracing | None = None,
        *,
        count_steps: bool = True,
        multiprocess: str | None = None,
    ) -> None:
        """`count_steps` and `multiprocess`: see Metrics (one of --api-workers' processes)."""
        self._engine = engine
        self.metrics = Metrics(
            settings.latency_buckets,
            engine=engine,
            max_queued_requests=settings.max_queued_requests,
            count_steps=count_steps,
            multiprocess=multiprocess,
        )
        self.tracing = tracing if tracing is not None else Tracing.from_env()
        self.log_prompts = settings.log_prompts
        self.pending: dict[str, RequestContext] = {}

    # engine client sinks --------------------------------------------------------------------

    def on_step(self, stats: StepStats) -> None:
        self.metrics.record_step(stats)
        if self.metrics.in_flight is not None:
            self.metrics.set_in_flight(self._engine())

    def on_record(self, record: RequestRecord) -> None:
        self.metrics.record_work(record)
        if self.metrics.in_flight is not None:
            self.metrics.set_in_flight(self._engine())
        ctx = self.pending.pop(record.request_id, None)
        if ctx is None:  # not started by a tracked HTTP request: count it on its own
            self.metrics.record_outcome(record.outcome)
            return
        ctx.records.append(record)
        self.tracing.add_record(ctx.span, record)

    # HTTP requests --------------------------------------------------------------------------

    def begin(self, scope: Scope) -> RequestContext:
        request_id = str(scope.get("state", {}).get("request_id", ""))
        method, path = scope["method"], scope["path"]
        span = self.tracing.start(
            f"{method} {path}",
            Headers(scope=scope),
            {
                "http.request.method": method,
                "http.route": path,
                "url.path": path,
                "gpt2.request_id": request_id,
            },
        )
        return RequestContext(request_id, method, path, self.pending, span=span)

    def finish(self, ctx: RequestContext, status: int) -> None:
        """Count the request's outcome, write its log line, end its span."""
        for engine_id in ctx.engine_ids:  # requests the engine refused before reporting them
            if self.pending.get(engine_id) is ctx:
                del self.pending[engine_id]
        failures = self._count(ctx, status)
        fields = self._log_fields(ctx, status, failures)
        log_finished(fields)
        self.tracing.end(
            ctx.span,
            {
                "http.response.status_code": status,
                "gpt2.outcome": fields["outcome"],
                "gpt2.prompt_tokens": fields["prompt_tokens"],
                "gpt2.completion_tokens": fields["completion_tokens"],
                "gpt2.finish_reason": ",".join(_finish_reasons(ctx)) or None,
            },
            # As OpenTelemetry's HTTP conventions say: 4xx answers are not a server span's
            # errors; 5xx ones are, and so are failures inside a 200 (a stream cut short).
            failures[0] if failures and (status >= 500 or status < 400) else None,
        )

    def _log_fields(
        self, ctx: RequestContext, status: int, failures: list[Outcome]
    ) -> dict[str, Any]:
        records = [r for r in ctx.records if r.num_output_tokens]  # those with a first token
        prompt_tokens = (
            sum(ctx.prompt_tokens)
            if ctx.prompt_tokens is not None
            else sum(r.num_prompt_tokens for r in ctx.records)
        )
        fields: dict[str, Any] = {
            "request_id": ctx.request_id,
            "method": ctx.method,
            "path": ctx.path,
            "status": status,
            "outcome": failures[0] if failures else ("success" if status < 400 else "rejected"),
            "finish_reason": _one_or_list(_finish_reasons(ctx)),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": sum(r.num_output_tokens for r in ctx.records),
            "queue_ms": _max_ms([r.timings.queue for r in records]),
            "ttft_ms": _max_ms([r.timings.time_to_first_token for r in records]),
            "total_ms": round((time.monotonic() - ctx.started) * 1000.0, 3),
        }
        if len(ctx.records) > 1:
            fields["choices"] = len(ctx.records)
        trace_id = self.tracing.trace_id(ctx.span)
        if trace_id is not None:
            fields["trace_id"] = trace_id
        if self.log_prompts and ctx.prompt is not None:
            fields["prompt"] = ctx.prompt
        return fields

    def _count(self, ctx: RequestContext, status: int) -> list[Outcome]:
        """Count each engine request, or the HTTP request, once. Returns the failure reasons."""
        successes = [r.outcome for r in ctx.records if r.outcome.is_success]
        failures: list[Outcome]
        engine_failures: list[Outcome] = [
            r.outcome
            for r in ctx.records
            if r.outcome in ENGINE_FAILURES and r.outcome is not Outcome.DISCONNECTED
        ]
        http_failure = ctx.error or reason_for_status(status)
        if engine_failures:
            failures = engine_failures
        elif http_failure is not None:  # the caller got an error: that is the one count
            successes, failures = [], [http_failure]
        else:
            failures = [r.outcome for r in ctx.records if r.outcome is Outcome.DISCONNECTED]
        for outcome in (*successes, *failures):
            self.metrics.record_outcome(outcome)
        return failures

    def close(self) -> None:
        self.tracing.shutdown()


class TelemetryMiddleware:
    """Follows POSTs to the generation routes; everything else passes straight through."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in GENERATION_PATHS
        ):
            await self.app(scope, receive, send)
            return
        ctx = self.telemetry.begin(scope)
        status: int | None = None

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        token = bind(ctx)
        try:
            await self.app(scope, receive, send_status)
        except Exception:
            if ctx.error is None:
                ctx.error = Outcome.INTERNAL
            status = status or 500
            raise
        finally:
            unbind(token)
            try:  # no status at all: cancelled before answering (the caller or the server left)
                self.telemetry.finish(ctx, status or 499)
            except Exception:  # observability must never break serving
                logger.exception("telemetry failed for request %s", ctx.request_id)


def _finish_reasons(ctx: RequestContext) -> list[Outcome]:
    return [r.outcome for r in ctx.records if r.outcome in ENGINE_FINISHED]


def _one_or_list(values: list[Outcome]) -> str | list[Outcome] | None:
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _max_ms(values: list[float]) -> float | None:
    return round(max(values) * 1000.0, 3) if values else None
