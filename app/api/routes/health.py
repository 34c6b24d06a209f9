"""Liveness and readiness are different questions.

/health: the process is up and serving HTTP (a failing liveness probe restarts the pod).
/ready: the engine has loaded, warmed up and is not draining (a failing readiness probe only
takes the pod out of the Service, which is what a restart of the worker or a drain needs).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.errors import APIError
from app.api.schemas import ERROR_RESPONSES, HealthResponse

router = APIRouter(tags=["Probes"])


@router.get("/health", response_model=HealthResponse)
async def health() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get("/ready", response_model=HealthResponse, responses={503: ERROR_RESPONSES[503]})
async def ready(request: Request) -> HealthResponse:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise APIError(503, "not ready: the engine is starting")
    if engine.is_draining:
        raise APIError(503, "not ready: draining for shutdown")
    if not engine.is_ready:
        raise APIError(503, "not ready: the engine is starting or restarting its worker")
    return HealthResponse(status="ready")
