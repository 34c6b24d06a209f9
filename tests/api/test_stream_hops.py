"""What a streamed token costs the HTTP process on its way from the engine to the route: the
engine delivers each delta straight into the stream the route reads (one hop, no task per
choice), whatever the number of choices."""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import Coroutine
from typing import Any

from app.api.choices import ChoicePlan, open_streams
from app.engine.protocol import FINISH_CODES, SamplingParams, StepResult
from tests.api.fakes import FakeEngineClient


def _plans(n: int, max_tokens: int) -> list[ChoicePlan]:
    return [ChoicePlan(i, 0, [1], SamplingParams(max_tokens=max_tokens)) for i in range(n)]


def test_a_streamed_request_runs_no_task_of_its_own(fake: FakeEngineClient) -> None:
    """Only the (scripted) worker's tasks run: no task per choice reads the engine's output and
    passes it on, however many choices there are."""
    created: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kw: Any) -> Any:
        created.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **kw)

    async def run() -> list[tuple[int, str]]:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(factory)
        streams = open_streams(fake, _plans(3, 4), "cmpl-t")
        await streams.start(prime_seconds=5.0)
        got = [entry async for entry in streams.events() if entry is not None]
        await streams.aclose()
        loop.set_task_factory(None)  # asyncio.run's own tasks, from here, are not counted
        return [(index, delta.text) for index, delta in got]

    got = asyncio.run(run())
    assert sorted(got) == sorted((i, c) for i in range(3) for c in " the")  # all there
    assert created.count("FakeEngineClient._work") == 3
    assert set(created) == {"FakeEngineClient._work"}, created


def test_a_delta_is_ready_for_the_route_as_the_engine_delivers_it(
    fake: FakeEngineClient,
) -> None:
    """The engine's output processing puts the delta where the route reads it: it is there
    before any other task runs (no queue in between that another task must move it from)."""
    fake.hold_after = 0  # the scripted worker sends nothing: the test sends the step itself

    async def run() -> tuple[bool, bool]:
        streams = open_streams(fake, _plans(1, 5), "cmpl-t")
        await streams.start(prime_seconds=0.0)
        for _ in range(5):  # whatever was started runs until it waits
            await asyncio.sleep(0)
        before = bool(streams.take())
        step = StepResult(
            array("q", [1]), array("q", [ord("x")]), bytes([FINISH_CODES.index(None)])
        )
        fake.outputs.process(step)  # the worker's step arrives (handle 1: the first call)
        after = bool(streams.take())  # no await since: nothing else ran
        await streams.aclose()
        return before, after

    assert asyncio.run(run()) == (False, True)
    assert fake.worker_aborts == ["cmpl-t-0"] and not fake.worker_running
