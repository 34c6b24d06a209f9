"""Plain ASGI middleware (no BaseHTTPMiddleware: it would buffer streams and hide disconnects).

Order, outermost first: request id -> telemetry (app/api/telemetry.py) -> CORS -> API key ->
body size limit -> routes.
"""

from __future__ import annotations

import hmac
import re
import uuid
from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import APIError

# What we accept from a caller's X-Request-Id; anything else is replaced, so logs and headers
# never carry arbitrary caller text.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics"})


class RequestIdMiddleware:
    """Accept the caller's X-Request-Id or make one (uuid4 hex); echo it on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        # A fresh dict: the server may share one lifespan state dict between requests.
        scope["state"] = {**scope.get("state", {}), "request_id": request_id}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-Id"] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class APIKeyMiddleware:
    """Bearer-token auth on every path but the probes and /metrics. No keys: no auth."""

    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        if self._authorized(Headers(scope=scope).get("authorization", "")):
            await self.app(scope, receive, send)
            return
        error = APIError(
            401,
            "missing or invalid API key: send the header 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await error.response()(scope, receive, send)

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        candidate = token.strip().encode()
        # Compare against every key, without stopping early, so timing says nothing about which
        # key (if any) is close.
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(candidate, key)
        return matched


class BodySizeLimitMiddleware:
    """413 for bodies over max_bytes, by Content-Length or, for chunked bodies, by counting."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await APIError(400, "invalid Content-Length header").response()(
                    scope, receive, send
                )
                return
            if int(declared) > self.max_bytes:
                await self._too_large().response()(scope, receive, send)
                return

        received = 0
        rejected = False
        response_started = False

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if rejected:
                return  # we already answered 413; whatever the app says next goes nowhere
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        async def counting_receive() -> Message:
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not response_started:
                    await self._too_large().response()(scope, receive, send)
                    rejected = True
                    # The app sees a disconnect and stops reading; its own answer is dropped.
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, counting_receive, guarded_send)

    def _too_large(self) -> APIError:
        return APIError(
            413, f"request body exceeds the limit of {self.max_bytes} bytes", param="body"
        )
