"""GET /metrics (Prometheus) and GET /v1/engine/stats (a live view of the scheduler)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client.exposition import choose_encoder

from app.api.deps import EngineDep
from app.api.schemas import ERROR_RESPONSES

router = APIRouter()

_STATS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        "ready, draining, worker_alive, worker_pid, worker_restarts, requests_in_flight, "
        "queued_prompt_tokens, num_running, num_waiting, kv_slots_used, kv_slots_total, "
        "kv_cache_usage (0..1), last_batch {sequences, decode_tokens, prefill_tokens}, "
        "recent_step_seconds {count, p50, max}, recent_step_ms (oldest first), "
        "drain_rate_requests_per_second"
    ),
    "additionalProperties": True,
}


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus exposition (text 0.0.4, or OpenMetrics when the scraper asks for it)."""
    registry = request.app.state.telemetry.metrics.registry
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(registry), media_type=content_type)


@router.get(
    "/v1/engine/stats",
    tags=["Operations"],
    response_model=None,
    responses={
        200: {
            "description": "Scheduler counts, KV cache use, recent step times, last batch",
            "content": {"application/json": {"schema": _STATS_SCHEMA}},
        },
        401: ERROR_RESPONSES[401],
        503: ERROR_RESPONSES[503],
    },
)
async def engine_stats(engine: EngineDep) -> JSONResponse:
    stats: dict[str, Any] = dict(engine.stats())
    used, total = stats.get("kv_slots_used"), stats.get("kv_slots_total")
    if isinstance(used, int) and isinstance(total, int) and total > 0:
        stats["kv_cache_usage"] = used / total
    recent = getattr(engine, "recent_step_seconds", None)
    if recent is not None:
        stats["recent_step_ms"] = [round(s * 1000.0, 3) for s in recent]
    return JSONResponse(stats)
