"""Virtual time for the load generator's tests: asyncio runs as fast as it can, but its clock only
moves when every task waits on a timer, and then straight to the next timer.

The fake servers (httpx.MockTransport, no sockets) sleep with asyncio.sleep; the code under test
reads time.perf_counter. Both read this one clock, so a 150 ms time to first token measures
exactly 150 ms, whatever the load of the machine, and a run of hours of sleeps takes milliseconds.
(The technique of aiotools' VirtualClock: the selector is asked to wait 0 s and the clock
advances by the wait it was asked for.)"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from types import ModuleType, SimpleNamespace
from typing import Any, TypeVar

import pytest

import app.bench.chat
import app.bench.client
import app.bench.mixed
import app.bench.runner

T = TypeVar("T")
# Modules of app/bench that read time.perf_counter for their measurements.
TIMED: tuple[ModuleType, ...] = (
    app.bench.chat,
    app.bench.client,
    app.bench.mixed,
    app.bench.runner,
)


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """app.bench's time.perf_counter reads this clock (for the test's duration)."""
        fake_time = SimpleNamespace(perf_counter=self.time, monotonic=self.time)
        for module in TIMED:
            monkeypatch.setattr(module, "time", fake_time)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """asyncio.run on a loop whose time is this clock."""
        loop = asyncio.new_event_loop()
        selector: selectors.BaseSelector = loop._selector  # type: ignore[attr-defined]
        real_select = selector.select

        def select(timeout: float | None = None) -> list[Any]:
            if timeout is None:  # no timer: only I/O could wake us, and there is none
                ready = real_select(0)
                if not ready:
                    raise RuntimeError("deadlock: nothing scheduled under virtual time")
                return ready
            self.now += max(0.0, timeout)
            return real_select(0)

        selector.select = select  # type: ignore[method-assign]
        loop.time = self.time  # type: ignore[method-assign]
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
