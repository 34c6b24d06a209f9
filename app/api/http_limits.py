"""Limits on what a connection may hold, below the ASGI app: uvicorn's h11 protocol, plus a
deadline for a request's headers.

What uvicorn offers covers part of it (checked on uvicorn 0.54 with h11 0.16):
- `limit_concurrency` (Settings.max_connections): past it, new requests get 503;
- `timeout_keep_alive`: an idle connection is closed 5 s after its last answer;
- h11 answers 400 and closes on malformed framing (two different Content-Lengths, a
  Transfer-Encoding other than chunked);
but not the rest, which is here and in BodySizeLimitMiddleware (app/api/middleware.py):
- no deadline at all for a request's headers: a connection that opens and sends nothing, or a
  byte every few seconds (slowloris), was held for as long as it liked. GuardedH11Protocol
  closes it (with a 408) when a request's headers are not complete header_timeout seconds
  after the connection opened or answered its last request;
- no deadline for the body (Content-Length: 100, then 10 bytes): the middleware's;
- Content-Length with Transfer-Encoding: h11 silently uses the chunked framing and keeps the
  connection, so a proxy that framed by Content-Length would see a different next request
  (request smuggling). The middleware answers 400 and closes the connection.

The deadline is a mixin over uvicorn's protocol class: httptools' (its C parser, uvicorn's own
choice when installed: less CPU per streamed token) or h11's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # httptools not installed: the pure-Python parser
    _Base = H11Protocol  # type: ignore[misc,assignment]

logger = logging.getLogger(__name__)

_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 27\r\nconnection: close\r\n\r\nrequest headers timed out\r\n"
)


class GuardedH11Protocol(_Base):
    """uvicorn's HTTP protocol (httptools, else h11), closing a connection whose next
    request's headers are not complete `header_timeout` seconds after it opened or finished
    its last answer."""

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._armed_for: Any = None
        super().connection_made(transport)
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if self.transport.is_closing():
            return
        # A request whose headers arrive after this makes a new cycle.
        self._armed_for = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout, self._on_header_timeout)

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not self._armed_for:
            return  # a request's headers came in time
        if self.cycle is not None and not self.cycle.response_complete:
            return  # still answering a (pipelined) request: its end re-arms the timer
        logger.info("closing a connection that sent no complete request headers in time")
        self.transport.write(_TIMEOUT_ANSWER)
        self.transport.close()


def guarded_h11(header_timeout: float) -> type[GuardedH11Protocol]:
    """The protocol class to give uvicorn.Config(http=...), with this header deadline."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout": header_timeout})
