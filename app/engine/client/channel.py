"""One socket to the worker, as the event loop sees it.

Messages are frames (wire.frame / FrameReader). What arrives is handed to `on_message` on the
loop itself, as it is read, with no thread hand-off. What is sent goes through the loop's
transport: written at once when the socket takes it, else buffered, so a send never blocks the
loop (nor waits on a worker that is itself busy sending its step results).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from app.engine.wire import FrameReader, frame

log = logging.getLogger(__name__)


class Channel(asyncio.Protocol):
    def __init__(
        self, on_message: Callable[[Any], object], on_closed: Callable[[], object]
    ) -> None:
        self._on_message = on_message
        self._on_closed = on_closed
        self._reader = FrameReader()
        self._transport: asyncio.Transport | None = None
        self.is_open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.is_open = True

    def data_received(self, data: bytes) -> None:
        for msg in self._reader.feed(data):
            try:
                self._on_message(msg)
            except Exception:  # a bug of ours must not look like a lost worker
                log.exception("handling a message from the engine worker failed")

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        if self.is_open:
            self.is_open = False
            self._on_closed()

    def send(self, msg: object) -> None:
        if self.is_open:
            assert self._transport is not None
            self._transport.write(frame(msg))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
