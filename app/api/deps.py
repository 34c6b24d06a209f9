"""Dependencies the routes declare: the engine client, the settings, the request id.

Async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread hand-off
per dependency per request for what is an attribute read."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request

from app.api.errors import APIError
from app.config import Settings
from app.engine.engine_client import EngineClient


async def get_engine(request: Request) -> EngineClient:
    engine: EngineClient | None = getattr(request.app.state, "engine", None)
    if engine is None:  # only between process start and the end of the lifespan's start-up
        raise APIError(503, "the engine is starting; retry shortly")
    return engine


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_request_id(request: Request) -> str:
    """The X-Request-Id the middleware accepted or generated; also the engine's request id."""
    request_id: str | None = request.scope.get("state", {}).get("request_id")
    return request_id or uuid.uuid4().hex


EngineDep = Annotated[EngineClient, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
