"""Drive one or more engine generations (OpenAI's `n`, or a list of prompts) as one stream.

Each generation runs in its own task and feeds one queue, so the route reads a single ordered
sequence of (choice index, delta) whatever the number of choices, and can send keep-alives while
the queue is quiet. Cancelling a task cancels the engine's async generator inside it, which is
how the engine learns that a request is aborted: closing a ChoiceStreams aborts every
generation that has not finished.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from starlette.requests import Request

from app.engine.protocol import GenerationDelta

logger = logging.getLogger(__name__)

StreamFactory = Callable[[], AsyncIterator[GenerationDelta]]


class ClientDisconnected(Exception):
    """The client went away before the answer was ready; its requests were aborted."""


@dataclass(frozen=True)
class _Item:
    index: int
    delta: GenerationDelta | None = None  # None with error None: that stream ended
    error: Exception | None = None


class ChoiceStreams:
    def __init__(self, factories: Sequence[StreamFactory]) -> None:
        self._factories = list(factories)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._buffer: list[_Item] = []
        self._open = len(self._factories)
        self.last_put = 0.0  # loop time of the last item put on the queue

    @property
    def pending(self) -> bool:
        """More items are ready now: events() would yield again without waiting. A writer that
        is behind joins the events it has into one write (one syscall, one pass through the
        ASGI send chain) until this turns False."""
        return bool(self._buffer) or not self._queue.empty()

    async def start(self, prime_seconds: float, request: Request | None = None) -> None:
        """Start every generation; wait up to prime_seconds for each one's first delta.

        The engine rejects a request (overloaded, bad input, not ready) before its first delta,
        so waiting for it lets the route answer with a real status code instead of an error
        event inside a 200 stream. A request still queued after prime_seconds is streamed
        anyway (headers go out, keep-alives follow) and any later error becomes an event.

        With `request`, a client that leaves meanwhile (its request still queued, say) aborts
        every generation at once and raises ClientDisconnected; nothing else would notice
        before the first delta. Whatever ends the wait early, cancellation included, aborts
        the generations: none is left running without a reader.
        """
        self._launch()
        watcher = asyncio.create_task(wait_for_disconnect(request)) if request else None
        try:
            await self._prime(prime_seconds, watcher)
        except BaseException:
            await self.aclose()
            raise
        finally:
            if watcher is not None:
                watcher.cancel()

    async def _prime(self, prime_seconds: float, watcher: asyncio.Task[None] | None) -> None:
        waiting = set(range(len(self._factories)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + prime_seconds
        while waiting:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            getter = asyncio.ensure_future(self._queue.get())
            try:
                await asyncio.wait(
                    [getter] if watcher is None else [getter, watcher],
                    timeout=remaining,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                if not getter.done():
                    getter.cancel()
            if not getter.cancelled() and getter.done():
                item = getter.result()
            elif watcher is not None and watcher.done():
                raise ClientDisconnected()
            else:
                return  # prime_seconds passed
            if item.error is not None:
                raise item.error
            self._buffer.append(item)
            waiting.discard(item.index)

    async def events(
        self, keep_alive_seconds: float | None = None
    ) -> AsyncIterator[tuple[int, GenerationDelta] | None]:
        """(choice index, delta) in arrival order; None when keep_alive_seconds pass quietly.

        Raises the first error any generation raises (the others are then aborted by aclose).
        """
        self._launch()
        timer = _QuietTimer(self, keep_alive_seconds) if keep_alive_seconds else None
        try:
            while self._open > 0:
                item = self._buffer.pop(0) if self._buffer else await self._queue.get()
                if item is _QUIET:
                    yield None
                    continue
                if item.error is not None:
                    raise item.error
                if item.delta is None:
                    self._open -= 1
                    continue
                yield item.index, item.delta
        finally:
            if timer is not None:
                timer.cancel()

    async def collect(self) -> list[list[GenerationDelta]]:
        """Every delta of every choice, in choice order (for non-streamed answers)."""
        results: list[list[GenerationDelta]] = [[] for _ in self._factories]
        async for entry in self.events():
            if entry is not None:
                results[entry[0]].append(entry[1])
        return results

    async def aclose(self) -> None:
        """Abort whatever is still running. Safe to call more than once."""
        running = [task for task in self._tasks if not task.done()]
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)

    def _put(self, item: _Item) -> None:
        self.last_put = asyncio.get_running_loop().time()
        self._queue.put_nowait(item)

    def _launch(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._pump(index, factory))
                for index, factory in enumerate(self._factories)
            ]

    async def _pump(self, index: int, factory: StreamFactory) -> None:
        stream: AsyncIterator[GenerationDelta] | None = None
        try:
            stream = factory()
            async for delta in stream:
                self._put(_Item(index, delta))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # engine errors travel to the reader, who maps them
            self._put(_Item(index, error=exc))
        else:
            self._put(_Item(index))
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()


_QUIET = _Item(-1)  # "nothing for keep_alive_seconds": the reader sends a keep-alive


class _QuietTimer:
    """Puts _QUIET on the queue when nothing else was put for `seconds`. One timer per stream,
    re-armed only when it fires: cheaper than a timeout around every queue read."""

    def __init__(self, streams: ChoiceStreams, seconds: float) -> None:
        self._streams, self._seconds = streams, seconds
        self._loop = asyncio.get_running_loop()
        streams.last_put = self._loop.time()
        self._handle = self._loop.call_later(seconds, self._fire)

    def _fire(self) -> None:
        quiet_until = self._streams.last_put + self._seconds
        if self._loop.time() >= quiet_until:
            self._streams._put(_QUIET)
            quiet_until = self._loop.time() + self._seconds
        self._handle = self._loop.call_at(quiet_until, self._fire)

    def cancel(self) -> None:
        self._handle.cancel()


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client closes the connection (the body has already been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def collect_unless_disconnected(
    streams: ChoiceStreams, request: Request
) -> list[list[GenerationDelta]]:
    """Collect a non-streamed answer, aborting it if the client leaves before it is ready."""
    work = asyncio.create_task(streams.collect())
    watcher = asyncio.create_task(wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        raise ClientDisconnected()
    finally:
        for task in (work, watcher):
            task.cancel()
        await asyncio.wait({work, watcher})
        await streams.aclose()
