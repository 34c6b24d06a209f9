"""The streamed answer: engine deltas written as server-sent events, pushed, not pulled.

A token costs the HTTP process most where it meets the web stack: a task woken per token per
stream, an async generator or two resumed, every middleware's send wrapper passed. Here the
engine's callback that delivers a delta (ChoiceStreams.attach) only marks the stream ready;
once the loop has run what is ready now (the worker's whole step, every step that arrived
together) each ready stream turns what it has into events and writes them in one `send`, run
on the spot (eager_send.send_now). So a stream that keeps up writes each token alone, one that
is behind (the HTTP process slower than the worker) joins the tokens of several steps into one
write, and no task runs per token either way.

Body chunks go to the server's own send (kept in the scope by `keep_server_send`), past the
middleware: every middleware of this app acts on the response's start only (tests/api/
test_event_stream.py holds the list), and the start goes through all of them.

What the events say is the route's: a StreamEvents turns deltas, keep-alives, the end and a
failure into bytes (app/api/openai_stream.py for OpenAI's chunks, generate.py for TGI's).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Mapping
from typing import ClassVar

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.eager_send import send_now
from app.api.sse import KEEP_ALIVE, SSE_HEADERS
from app.api.streams import ChoiceStreams
from app.engine.protocol import GenerationDelta

logger = logging.getLogger(__name__)

SERVER_SEND = "gpt2_serve.server_send"  # scope key: the server's send, before any middleware


def keep_server_send(app: ASGIApp) -> ASGIApp:
    """Wrap the whole app (middleware included) so an event stream finds the server's send."""

    async def outermost(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[SERVER_SEND] = send
        await app(scope, receive, send)

    return outermost


class StreamEvents:
    """What a stream says, as bytes: written by the event loop's callbacks, so never awaits."""

    # With a stream interval above 1, a choice's deltas written together are said as one
    # (ChoiceStreams.take's merge): true where one event may carry several tokens (OpenAI's
    # chunks), not where each token is its own event (TGI's). At interval 1 every token stays
    # its own event, also when several go out in one write.
    merges_deltas: ClassVar[bool] = False

    def opening(self) -> bytes:
        """Events that go out before any delta (OpenAI chat's role chunks)."""
        return b""

    def delta(self, index: int, delta: GenerationDelta) -> bytes:
        """The events for one choice's delta (b"" for none: text held back)."""
        raise NotImplementedError

    def end(self) -> bytes:
        """What follows the last delta of every choice (usage, [DONE])."""
        return b""

    def error(self, exc: Exception) -> bytes:
        """What ends a stream that failed after its headers went out."""
        raise NotImplementedError


class EventStreamResponse(Response):
    """text/event-stream of a ChoiceStreams' deltas, as `events` words them. Whatever ends it
    (the last delta, an error, the client leaving, cancellation), the generations that have not
    finished are aborted before it returns."""

    media_type = "text/event-stream"

    def __init__(
        self,
        streams: ChoiceStreams,
        events: StreamEvents,
        *,
        keep_alive_seconds: float | None,
        stream_interval: int = 1,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, **(headers or {})})
        self._streams = streams
        self._events = events
        self._keep_alive_seconds = keep_alive_seconds
        self._stream_interval = stream_interval
        self._merge = events.merges_deltas and stream_interval > 1
        self._send: Send | None = None
        self._out: list[bytes] = []  # events made, not yet written
        self._queued = False  # in the write batch already
        self._writing: asyncio.Future[None] | None = None  # a send that had to wait
        self._last_sent = False  # the final chunk went to send
        # Done when the final chunk is written (False), the client left (True), or a write
        # failed (its exception).
        self._done: asyncio.Future[bool] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        done = self._done = loop.create_future()
        batch = _WriteBatch.of(loop)
        watcher: asyncio.Future[None] | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            self._send = scope.get(SERVER_SEND, send)
            self._out.append(self._events.opening())

            def ready() -> None:
                if not self._queued:
                    self._queued = True
                    batch.add(self)

            # The opening and whatever arrived before (the first token, which the route waited
            # for) go now, behind the headers, not a turn of the event loop later: on a busy
            # loop a turn is what a token costs every stream, and TTFT would pay it. (Marked
            # queued meanwhile, so attach does not also queue a flush for what is written now.)
            self._queued = True
            self._streams.attach(ready, self._keep_alive_seconds, self._stream_interval)
            self.flush()
            # The request's own watcher when the route started one (ChoiceStreams.start).
            watcher = self._streams.client_gone or asyncio.ensure_future(_disconnected(receive))

            def client_left(_: object) -> None:
                if not done.done():
                    done.set_result(True)

            # One callback instead of asyncio.wait's waiter and callbacks on both (15 against
            # 36 µs a request here).
            watcher.add_done_callback(client_left)
            if await done:  # a failed write raises here, as a failed send would
                logger.debug("client left an event stream")
        finally:
            self._last_sent = True  # nothing more is written, whatever is still queued
            if watcher is not None:
                watcher.cancel()
            if self._writing is not None:
                self._writing.cancel()
            await self._streams.aclose()

    def flush(self) -> None:
        """Turn what has arrived into events and write them in one send (the write batch
        calls this once the loop has run what was ready)."""
        self._queued = False
        if self._writing is not None or self._last_sent:
            return  # a send is waiting (it flushes again when done), or the stream is over
        out = self._out
        last = False
        try:
            for index, item in self._streams.take(self._merge):
                if item is None:
                    out.append(KEEP_ALIVE)
                elif isinstance(item, BaseException):
                    raise item
                else:
                    out.append(self._events.delta(index, item))
            if self._streams.ended:
                out.append(self._events.end())
                last = True
        except Exception as exc:
            out.append(self._events.error(exc))
            last = True
        body = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if body or last:
            self._write(body, last)

    def _write(self, body: bytes, last: bool) -> None:
        assert self._send is not None and self._done is not None
        self._last_sent = last
        try:
            waiting = send_now(
                self._send, {"type": "http.response.body", "body": body, "more_body": not last}
            )
        except Exception as exc:
            self._fail(exc)
            return
        if waiting is not None:
            self._writing = waiting
            waiting.add_done_callback(self._written)
        elif last and not self._done.done():
            self._done.set_result(False)

    def _written(self, task: asyncio.Future[None]) -> None:
        """A send that had to wait is done: finish, or write what arrived meanwhile."""
        assert self._done is not None
        self._writing = None
        if task.cancelled():
            return  # the response is being torn down
        exc = task.exception()
        if exc is not None:
            self._fail(exc)
        elif self._last_sent:
            if not self._done.done():
                self._done.set_result(False)
        else:
            self.flush()

    def _fail(self, exc: BaseException) -> None:
        self._last_sent = True
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)


class _WriteBatch:
    """The streams of one event loop that have something to write, flushed together by one
    callback once the loop has run what is ready now: all rows of the worker's step, and every
    step that arrived in the same read, reach a stream before it writes."""

    _of_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _WriteBatch]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ready: list[EventStreamResponse] = []

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _WriteBatch:
        batch = cls._of_loop.get(loop)
        if batch is None:
            batch = cls._of_loop[loop] = cls(loop)
        return batch

    def add(self, stream: EventStreamResponse) -> None:
        if not self._ready:
            self._loop.call_soon(self._flush)
        self._ready.append(stream)

    def _flush(self) -> None:
        ready, self._ready = self._ready, []
        for stream in ready:
            try:
                stream.flush()
            except Exception as exc:  # one stream's failure must not stop the others' writes
                logger.exception("an event stream failed to write")
                stream._fail(exc)


async def _disconnected(receive: Receive) -> None:
    """Return when the server says the client is gone (or the response is complete)."""
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return
