"""GET /metrics (Prometheus) and GET /v1/engine/stats (a live view of the scheduler)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client.exposition import choose_encoder

from app.api.deps import engine_of
from app.api.schemas import ERROR_RESPONSES, EngineStats

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus exposition (text 0.0.4, or OpenMetrics when the scraper asks for it)."""
    registry = request.app.state.telemetry.metrics.registry
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(registry), media_type=content_type)


@router.get(
    "/v1/engine/stats",
    tags=["Operations"],
    response_model=EngineStats,
    responses={
        200: {"description": "Scheduler counts, KV cache use, recent step times, last batch"},
        401: ERROR_RESPONSES[401],
        503: ERROR_RESPONSES[503],
    },
)
async def engine_stats(request: Request) -> EngineStats:
    """The engine's own view (EngineClient.stats()): KV cache use as a fraction, the recent
    step times in milliseconds."""
    return EngineStats.model_validate(engine_of(request).stats())
