"""send_now runs an ASGI send on the spot when it need not wait, and hands the rest to a task,
with a task's semantics (its result, its exception, cancellation reaching the send), when it
does."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message

from app.api.eager_send import send_now

BODY: Message = {"type": "http.response.body", "body": b"x", "more_body": True}


def test_a_send_that_need_not_wait_is_done_on_return() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def run() -> None:
        assert send_now(send, BODY) is None
        assert sent == [BODY]  # no await in between: nothing else ran

    asyncio.run(run())


def test_a_send_that_fails_at_once_raises_at_once() -> None:
    async def send(message: Message) -> None:
        raise OSError("reset")

    async def run() -> None:
        with pytest.raises(OSError, match="reset"):
            send_now(send, BODY)

    asyncio.run(run())


def test_a_send_that_waits_is_finished_by_a_task() -> None:
    sent: list[Message] = []

    async def run() -> None:
        drained = asyncio.Event()

        async def send(message: Message) -> None:
            await drained.wait()  # the socket's buffer is full until the client reads
            await asyncio.sleep(0)  # and a bare yield on the way
            sent.append(message)

        waiting = send_now(send, BODY)
        assert waiting is not None
        await asyncio.sleep(0.01)
        assert sent == [] and not waiting.done()
        drained.set()
        await waiting
        assert sent == [BODY]

    asyncio.run(run())


def test_a_send_that_fails_after_waiting_fails_its_task() -> None:
    async def run() -> None:
        drained = asyncio.Event()

        async def send(message: Message) -> None:
            await drained.wait()
            raise OSError("reset while waiting")

        waiting = send_now(send, BODY)
        assert waiting is not None
        drained.set()
        with pytest.raises(OSError, match="reset while waiting"):
            await waiting

    asyncio.run(run())


def test_cancelling_the_task_cancels_the_send() -> None:
    seen: list[str] = []

    async def run() -> None:
        never = asyncio.Event()

        async def send(message: Message) -> None:
            try:
                await never.wait()
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        waiting = send_now(send, BODY)
        assert waiting is not None
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(run())
    assert seen == ["cancelled"]
