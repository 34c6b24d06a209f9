"""The worker as one of several API processes sees it (--api-workers N > 1).

The supervisor (app/api_workers.py) owns the worker and restarts it (WorkerHandle); the worker
listens on a Unix socket. Each API process connects to it and is greeted with WorkerReady; its
requests and aborts go up that connection and only its own rows come back (the worker splits
each step by client, app/engine/worker/clients.py). When the connection closes the worker is
gone: every request in flight is reported lost (on_lost), the process is not ready, and it
connects again, every RETRY_SECONDS, until the next worker greets it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.engine.client.channel import Channel
from app.engine.protocol import ModelInfo, WorkerReady

log = logging.getLogger(__name__)
RETRY_SECONDS = 0.1


@dataclass(frozen=True)
class ApiProcess:
    """Which of the --api-workers HTTP processes this is, and where the worker listens."""

    index: int  # 0 .. count - 1; process 0 also counts the worker's per-step metrics
    count: int
    worker_address: str  # the worker's Unix socket


class RemoteWorker:
    """The same face as WorkerHandle (ready, info, send, restarts), over a connection to a
    worker this process did not start."""

    def __init__(
        self,
        address: str,
        on_message: Callable[[Any], None],
        on_lost: Callable[[int | None, str | None], None],
    ) -> None:
        self._address = address
        self._on_message = on_message
        self._on_lost = on_lost
        self._channel: Channel | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()
        self._closing = False
        self.info: ModelInfo | None = None
        self.pid: int | None = None
        self.restarts = 0  # workers lost (the supervisor starts a new one after each)

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()

    @property
    def is_alive(self) -> bool:
        return self._channel is not None and self._channel.is_open

    async def start(self) -> ModelInfo:
        """Connect, and wait until the worker has greeted this process."""
        self._loop = asyncio.get_running_loop()
        self._connecting = self._loop.create_task(self._connect())
        await self._ready.wait()
        assert self.info is not None
        return self.info

    def send(self, msg: Any) -> None:
        if self._channel is not None:
            self._channel.send(msg)

    def kill(self, *, restart: bool = True) -> None:
        """The second signal: the worker is the supervisor's to kill; this process only lets
        go of it at once."""
        self._closing = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._channel is not None:
            self._channel.close()

    async def stop(self) -> None:
        """Disconnect (the supervisor stops the worker once every API process has)."""
        self._closing = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._channel is not None:
            self._channel.close()

    async def _connect(self) -> None:
        assert self._loop is not None
        while not self._closing:
            channel = self._new_channel()
            try:
                await self._loop.create_unix_connection(lambda: channel, self._address)  # noqa: B023
            except OSError:  # not there yet, or the last worker's socket
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if channel.is_open:
                self._channel = channel
            return

    def _new_channel(self) -> Channel:
        channel: Channel

        def closed() -> None:
            self._closed(channel)

        channel = Channel(self._dispatch, closed)
        return channel

    def _dispatch(self, msg: Any) -> None:
        if isinstance(msg, WorkerReady):
            self.info, self.pid = msg.info, msg.pid
            self._ready.set()
            log.info("connected to the engine worker (pid %d)", msg.pid)
        else:
            self._on_message(msg)

    def _closed(self, channel: Channel) -> None:
        if self._channel is not channel and self._channel is not None:
            return
        was_ready = self._ready.is_set()
        self._ready.clear()
        self._channel = None
        self.pid = None
        if self._closing:
            return
        if was_ready:
            self.restarts += 1
            self._on_lost(None, "the connection to the engine worker closed")
        assert self._loop is not None
        self._connecting = self._loop.create_task(self._connect())
