"""What the routes need from the app, read off the request: the engine client, the settings, the
request id.

Plain functions, not FastAPI `Depends`: resolving a dependency costs about 28 µs of the event
loop's time per request on a small CPU (docs/performance.md), three of them a tenth of what a
streamed request costs the HTTP process besides its tokens, for what are attribute reads."""

from __future__ import annotations

from starlette.requests import Request

from app.api.errors import APIError
from app.api.ids import random_hex
from app.config import Settings
from app.engine.engine_client import EngineClient


def engine_of(request: Request) -> EngineClient:
    engine: EngineClient | None = getattr(request.app.state, "engine", None)
    if engine is None:  # only between process start and the end of the lifespan's start-up
        raise APIError(503, "the engine is starting; retry shortly")
    return engine


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def request_id_of(request: Request) -> str:
    """The X-Request-Id the middleware accepted or generated; also the engine's request id."""
    request_id: str | None = request.scope.get("state", {}).get("request_id")
    return request_id or random_hex()
