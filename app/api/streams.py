"""Drive one or more engine generations (OpenAI's `n`, or a list of prompts) as one stream.

Every generation delivers into one sink the route reads, so the route sees a single ordered
sequence of (choice index, delta) whatever the number of choices, and can send keep-alives while
it is quiet. The engine calls the sink as it processes the worker's output (EngineClient
.add_request): a delta reaches the route with one hop and no task of its own. It is read in one
of two ways: pulled (`events()`, `collect()`: a non-streamed answer), or pushed (`attach()`: an
event stream, app/api/event_stream.py, is told when items arrive and takes them, with no task
woken per token). Closing a ChoiceStreams leaves every generation, which aborts those that have
not finished.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from starlette.requests import Request

from app.engine.protocol import DeltaSink, GenerationDelta

logger = logging.getLogger(__name__)

# Starts one generation delivering into the sink it is given (raising at once if the engine
# refuses it) and returns `leave`: called when the reader is done, it aborts the generation if
# it is still running; what it returns, if a future, is awaited by aclose.
Starter = Callable[[DeltaSink], Callable[[], object]]
StreamFactory = Callable[[], AsyncIterator[GenerationDelta]]


class ClientDisconnected(Exception):
    """The client went away before the answer was ready; its requests were aborted."""


# (choice index, what arrived): a delta, the error that ended that choice, or None for "quiet
# for keep_alive_seconds" (the reader sends a keep-alive).
_Item = tuple[int, GenerationDelta | BaseException | None]


class ChoiceStreams:
    def __init__(self, starters: Sequence[Starter]) -> None:
        self._starters = list(starters)
        self._leaves: list[Callable[[], object]] = []
        self._started = False
        self._items: deque[_Item] = deque()
        self._waiter: asyncio.Future[None] | None = None  # the reader, waiting for an item
        self._open = len(self._starters)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_ready: Callable[[], None] | None = None  # the attached reader (push)
        # Push only: the reader is told once a choice has this many tokens it has not taken
        # (its first and last delta, errors and keep-alives at once).
        self._interval = 1
        self._untaken = [0] * len(self._starters)  # tokens per choice since the last take()
        self._timer: _QuietTimer | None = None  # the attached reader's keep-alives
        self.last_put = 0.0  # loop time of the last item delivered
        # Done when the client leaves (start(request=...) watches from then until aclose): one
        # watcher for the whole request, which its readers share instead of making their own.
        self.client_gone: asyncio.Future[None] | None = None

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
        try:
            self._launch()
            if request is not None:
                watcher = self.client_gone = asyncio.ensure_future(wait_for_disconnect(request))
                watcher.add_done_callback(self._wake)
            await self._prime(prime_seconds)
        except BaseException:
            await self.aclose()
            raise

    async def _prime(self, prime_seconds: float) -> None:
        waiting = set(range(len(self._starters)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + prime_seconds
        seen = 0  # items looked at; they stay for events() to read
        while waiting:
            while waiting and seen < len(self._items):  # in order, as events() will read them
                index, item = self._items[seen]
                seen += 1
                if isinstance(item, BaseException):
                    raise item
                waiting.discard(index)
            if not waiting:
                return
            if self.client_gone is not None and self.client_gone.done():
                raise ClientDisconnected()
            if loop.time() >= deadline:
                return  # prime_seconds passed
            # One timer on this task; the watcher wakes the same waiter (_wake). asyncio.wait
            # would cost a callback on each future and a timer handle per wait, about 50 µs.
            try:
                async with asyncio.timeout_at(deadline):
                    await self._wait()
            except TimeoutError:
                return  # prime_seconds passed

    def _wake(self, _: object = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def events(
        self, keep_alive_seconds: float | None = None
    ) -> AsyncIterator[tuple[int, GenerationDelta] | None]:
        """(choice index, delta) in arrival order; None when keep_alive_seconds pass quietly.

        Raises the first error any generation delivers (the others are then aborted by aclose).
        """
        self._launch()
        timer = _QuietTimer(self, keep_alive_seconds) if keep_alive_seconds else None
        items = self._items
        try:
            while self._open > 0:
                if not items:
                    await self._wait()
                    continue
                index, item = items.popleft()
                if item is None:
                    yield None
                    continue
                if isinstance(item, BaseException):
                    raise item
                if item.finished:
                    self._open -= 1
                yield index, item
        finally:
            if timer is not None:
                timer.cancel()

    def attach(
        self,
        on_ready: Callable[[], None],
        keep_alive_seconds: float | None,
        interval: int = 1,
    ) -> None:
        """Push instead of pull: `on_ready()` is called, from the engine's callback, when items
        arrive (at once if some already have), and the reader then `take()`s them. A None item
        comes when keep_alive_seconds pass quietly.

        With `interval` N > 1 the reader is told once some choice has N new tokens, or has its
        first or last delta; an error or a keep-alive tells it at once. What arrived in between
        waits in the deque and goes with the next take()."""
        self._launch()
        self._interval = interval
        self._on_ready = on_ready
        if keep_alive_seconds:
            self._timer = _QuietTimer(self, keep_alive_seconds)
        if self._items:
            on_ready()

    def take(self, merge: bool = False) -> list[_Item]:
        """Every item that has arrived, in order (push). A finished delta ends its choice;
        `ended` tells when all have. With `merge`, each choice's deltas that arrived together
        become one (merge_deltas), at the place of its first; a keep-alive or an error between
        two deltas keeps them apart."""
        items = [*self._items]
        self._items.clear()
        if self._interval > 1:
            self._untaken = [0] * len(self._untaken)
        for _, item in items:
            if type(item) is GenerationDelta and item.finish_reason is not None:
                self._open -= 1
        if merge and len(items) > 1:
            return _merged(items)
        return items

    @property
    def ended(self) -> bool:
        """Every choice has delivered its last delta."""
        return self._open == 0

    async def collect(self) -> list[list[GenerationDelta]]:
        """Every delta of every choice, in choice order (for non-streamed answers)."""
        results: list[list[GenerationDelta]] = [[] for _ in self._starters]
        async for entry in self.events():
            if entry is not None:
                results[entry[0]].append(entry[1])
        return results

    async def aclose(self) -> None:
        """Abort whatever is still running. Safe to call more than once."""
        self._on_ready = None
        if self.client_gone is not None:
            self.client_gone.cancel()
        if self._timer is not None:
            self._timer.cancel()
        waits = [left for left in self._leave_all() if isinstance(left, asyncio.Future)]
        if waits:
            await asyncio.wait(waits)

    def _leave_all(self) -> list[object]:
        leaves, self._leaves = self._leaves, []
        return [leave() for leave in leaves]

    def _put(self, index: int, item: GenerationDelta | BaseException | None) -> None:
        """The sink: called by the engine (or the quiet timer) with the next item."""
        assert self._loop is not None  # set by _launch, before anything can be delivered
        self.last_put = self._loop.time()
        self._items.append((index, item))
        on_ready = self._on_ready
        if on_ready is None:
            self._wake()
            return
        if (
            self._interval > 1
            and type(item) is GenerationDelta
            and item.finish_reason is None
            and item.num_output_tokens > 1  # the first token goes at once (time to first token)
        ):
            untaken = self._untaken[index] + len(item.token_ids)
            self._untaken[index] = untaken
            if untaken < self._interval:
                return
        on_ready()

    async def _wait(self) -> None:
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _launch(self) -> None:
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        try:
            for index, start in enumerate(self._starters):
                self._leaves.append(start(functools.partial(self._put, index)))
        except BaseException:
            self._leave_all()  # those already started; the refusal goes to the caller
            raise


def merge_deltas(deltas: Sequence[GenerationDelta]) -> GenerationDelta:
    """One delta saying what consecutive deltas of one generation say: their text, tokens and
    logprobs joined; where it stands (finish, counts, timings) from the last; prompt logprobs
    from the one that carried them (the first token's)."""
    if len(deltas) == 1:
        return deltas[0]
    first, last = deltas[0], deltas[-1]
    prompt_logprobs = next(
        (d.prompt_logprobs for d in deltas if d.prompt_logprobs is not None), None
    )
    return GenerationDelta(
        first.request_id,
        "".join([d.text for d in deltas]),
        tuple(t for d in deltas for t in d.token_ids),
        tuple(lp for d in deltas for lp in d.logprobs),
        last.finish_reason,
        last.num_prompt_tokens,
        last.num_output_tokens,
        last.stop_reason,
        last.timings,
        prompt_logprobs,
        last.num_cached_tokens,
    )


def _merged(items: list[_Item]) -> list[_Item]:
    runs: list[tuple[int, list[GenerationDelta] | BaseException | None]] = []
    open_runs: dict[int, list[GenerationDelta]] = {}  # choice -> its run since the last break
    for index, item in items:
        if isinstance(item, GenerationDelta):
            run = open_runs.get(index)
            if run is None:
                run = open_runs[index] = []
                runs.append((index, run))
            run.append(item)
        else:  # nothing merges across a keep-alive or an error
            open_runs.clear()
            runs.append((index, item))
    return [
        (index, merge_deltas(entry) if isinstance(entry, list) else entry) for index, entry in runs
    ]


def pumped(factory: StreamFactory) -> Starter:
    """A Starter over an async iterator of deltas (an engine's generate(), a test's script): a
    task reads it into the sink. Leaving cancels the task, which closes the iterator (how
    generate() learns of an abort); aclose waits for that."""

    def start(sink: DeltaSink) -> Callable[[], object]:
        async def pump() -> None:
            stream: AsyncIterator[GenerationDelta] | None = None
            finished = False
            try:
                stream = factory()
                async for delta in stream:
                    finished = delta.finished
                    sink(delta)
                if not finished:
                    sink(RuntimeError("the generation ended without a finish reason"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # engine errors travel to the reader, who maps them
                sink(exc)
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()

        task = asyncio.create_task(pump())

        def leave() -> asyncio.Task[None]:
            task.cancel()
            return task

        return leave

    return start


class _QuietTimer:
    """Delivers None (index -1) when nothing else came for `seconds`. One timer per stream,
    re-armed only when it fires: cheaper than a timeout around every wait."""

    def __init__(self, streams: ChoiceStreams, seconds: float) -> None:
        self._streams, self._seconds = streams, seconds
        self._loop = asyncio.get_running_loop()
        streams.last_put = self._loop.time()
        self._handle = self._loop.call_later(seconds, self._fire)

    def _fire(self) -> None:
        quiet_until = self._streams.last_put + self._seconds
        if self._loop.time() >= quiet_until:
            self._streams._put(-1, None)
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
    watcher = streams.client_gone or asyncio.ensure_future(wait_for_disconnect(request))
    both: set[asyncio.Future[Any]] = {work, watcher}
    try:
        done, _ = await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        raise ClientDisconnected()
    finally:
        for task in both:
            task.cancel()
        await asyncio.wait(both)
        await streams.aclose()
