"""The FastAPI application: routers, middleware, error handlers, and the engine's lifespan.

Importing this module never imports torch: the engine's worker process does that.
"""

from __future__ import annotations

import gc
import inspect
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from app.api.errors import install_error_handlers
from app.api.event_stream import keep_server_send
from app.api.middleware import APIKeyMiddleware, BodySizeLimitMiddleware, RequestIdMiddleware
from app.api.routes import chat, completions, generate, health, models, stats, tokenize
from app.api.routes.models import server_version
from app.api.schemas.common import TOKEN_ID_MARKER
from app.api.streams import ClientDisconnected
from app.api.telemetry import Telemetry, TelemetryMiddleware
from app.config import BUNDLED_MODEL, Settings, to_engine_config
from app.engine.client.async_engine import AsyncEngine
from app.engine.client.remote_worker import ApiProcess
from app.engine.engine_client import EngineClient
from app.metrics import multiprocess_dir

logger = logging.getLogger(__name__)
GC_YOUNG_THRESHOLD = 20_000

# FastAPI 0.165+ wraps every request in its own OpenTelemetry middleware, which asks the global
# providers whether tracing is on at each request. app/tracing.py already makes the spans this
# service wants (one per generation request, with its tokens and outcome): switch FastAPI's off.
_NO_NATIVE_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_app(
    settings: Settings | None = None,
    engine: EngineClient | None = None,
    telemetry: Telemetry | None = None,
    *,
    api_process: ApiProcess | None = None,
) -> FastAPI:
    """Build the app. Without `engine`, the lifespan creates an AsyncEngine from the settings,
    starts it (the worker loads and warms up the model) and drains it on shutdown. An engine
    passed in belongs to the caller, who starts and stops it (tests pass fakes this way) and
    who feeds app.state.telemetry's on_step / on_record if it wants metrics from it.
    `telemetry` (metrics, request log, tracing) is built from the settings when not given.
    `api_process`: this app is one of --api-workers' HTTP processes (app/api_workers.py): its
    engine connects to the worker the supervisor runs, and its metrics are multiprocess."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine is not None:
            app.state.engine = engine
            try:
                yield
            finally:
                app.state.telemetry.close()
            return
        config = to_engine_config(settings)
        try:
            client = AsyncEngine(
                config,
                model_id=settings.model_name,
                max_queued_requests=settings.max_queued_requests,
                max_queued_tokens=settings.max_queued_tokens,
                stats_sink=app.state.telemetry.on_step,
                request_sink=app.state.telemetry.on_record,
                api_process=api_process,
            )
            logger.info("starting the engine for %s", config.model)
            await client.start()
        except Exception as exc:
            # uvicorn only logs a failed startup (the CLI quiets that to DEBUG); the CLI reads
            # the cause here to report it in one line with its exit status (app/startup_errors).
            app.state.startup_error = exc
            raise
        _settle_garbage_collector()
        info = client.info
        logger.log(
            logging.INFO if api_process is None or api_process.index == 0 else logging.DEBUG,
            "serving model %r from %s%s: %s%s on %s, context %d tokens, %d sequences at once",
            info.model_id,
            info.model_path,
            " (the bundled demo model; name one with --model or GPT2_MODEL)"
            if config.model == str(BUNDLED_MODEL)
            else "",
            info.dtype,
            "" if info.quantization == "none" else f" with {info.quantization} GEMMs",
            info.device,
            info.max_model_len,
            info.max_num_seqs,
        )
        app.state.engine = client
        try:
            yield
        finally:
            # The one drain: from the signal that began it (cli.py), or from now.
            await client.shutdown(settings.drain_timeout_seconds)
            app.state.telemetry.close()

    app = _ServingApp(
        title="gpt2-serve",
        version=server_version(),
        description="GPT-2 inference: OpenAI- and TGI-compatible, continuous batching, SSE.",
        lifespan=lifespan,
        **_NO_NATIVE_TELEMETRY,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.startup_error = None
    app.state.started_at = int(time.time())
    app.state.telemetry = telemetry or Telemetry(
        settings,
        engine=lambda: getattr(app.state, "engine", None),
        count_steps=api_process is None or api_process.index == 0,
        multiprocess=multiprocess_dir() if api_process is not None else None,
    )

    for module in (completions, chat, generate, models, tokenize, health, stats):
        app.include_router(module.router)
    _install_openapi(app)
    install_error_handlers(app)
    app.add_exception_handler(ClientDisconnected, _client_gone)
    _add_middleware(app, settings)
    return app


class _ServingApp(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        # Outside everything, Starlette's error middleware included: an event stream writes its
        # body chunks to the server's send directly (app/api/event_stream.py says why).
        return keep_server_send(super().build_middleware_stack())


def _settle_garbage_collector() -> None:
    """Move what start-up allocated (modules, the tokenizer, the app) out of the collector's
    sight, and let young objects pile up longer between collections: per streamed token the
    HTTP process allocates a few short-lived objects, and with the default threshold (700) the
    cyclic collector ran often enough to take ~12% of its CPU under load."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    # add_middleware wraps what is already there: the last added runs first.
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_request_body_bytes,
        timeout_seconds=settings.body_timeout_seconds,
    )
    app.add_middleware(APIKeyMiddleware, keys=settings.api_keys())
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
            expose_headers=["X-Request-Id", "Server-Timing", "Retry-After"],
        )
    # Inside the request id (it logs it), outside the rest (it sees their 413s too).
    app.add_middleware(TelemetryMiddleware, telemetry=app.state.telemetry)
    app.add_middleware(RequestIdMiddleware)


def _install_openapi(app: FastAPI) -> None:
    """The schema FastAPI builds, less the 422 answers FastAPI adds to every route with a body
    (the OpenAI routes answer bad input with 400, which they declare), plus the one limit known
    only once the model is loaded: the largest token id, written into every field marked as a
    token id."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        _drop_default_validation_answers(schema)
        engine = app.state.engine
        if engine is None:
            app.openapi_schema = None  # build again once the engine is there
        else:
            _set_token_id_maximum(schema, engine.info.vocab_size - 1)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


_FASTAPI_422 = "#/components/schemas/HTTPValidationError"


def _drop_default_validation_answers(schema: dict[str, Any]) -> None:
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            answer = operation.get("responses", {}).get("422", {})
            ref = answer.get("content", {}).get("application/json", {}).get("schema", {})
            if ref.get("$ref") == _FASTAPI_422:
                del operation["responses"]["422"]
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)


def _set_token_id_maximum(node: Any, maximum: int) -> None:
    if isinstance(node, dict):
        if node.get(TOKEN_ID_MARKER):
            node["maximum"] = maximum
        for value in node.values():
            _set_token_id_maximum(value, maximum)
    elif isinstance(node, list):
        for value in node:
            _set_token_id_maximum(value, maximum)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # Nobody reads this answer; 499 (nginx's "client closed request") tells the access log why.
    logger.info("client left before %s %s was answered", request.method, request.url.path)
    return Response(status_code=499)
