"""Plain ASGI middleware (no BaseHTTPMiddleware: it would buffer streams and hide disconnects).

Order, outermost first: request id -> telemetry (app/api/telemetry.py) -> CORS -> API key ->
body size limit -> routes.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import APIError
from app.api.ids import random_hex

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
        request_id = given if _REQUEST_ID.match(given) else random_hex()
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
    """413 for bodies over max_bytes, by Content-Length or, for chunked bodies, by counting;
    408 for a body not all there timeout_seconds after the request began; 400 for a request
    framed both by Content-Length and Transfer-Encoding. The last two close the connection:
    what follows on it cannot be trusted to be a request of its own."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_seconds: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None and "transfer-encoding" in headers:
            await _closing_error(
                400, "Content-Length and Transfer-Encoding together: ambiguous framing"
            ).response()(scope, receive, send)
            return
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
        body_done = scope["method"] in ("GET", "HEAD", "OPTIONS")
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout_seconds is None else loop.time() + self.timeout_seconds

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if rejected:
                return  # we already answered 413; whatever the app says next goes nowhere
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        async def counting_receive() -> Message:
            nonlocal received, rejected, body_done
            if rejected:
                return {"type": "http.disconnect"}
            if body_done or deadline is None:  # waiting for the caller to leave: no deadline
                message = await receive()
            else:
                try:
                    # asyncio.timeout_at: a timer on this task, not wait_for's task per receive.
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    if not response_started:
                        await _closing_error(
                            408,
                            f"the request body did not arrive within {self.timeout_seconds:g} s",
                        ).response()(scope, receive, send)
                    rejected = True
                    return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
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


def _closing_error(status: int, message: str) -> APIError:
    return APIError(status, message, param="body", headers={"Connection": "close"})
