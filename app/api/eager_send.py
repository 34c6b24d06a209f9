"""Run an ASGI `send` now, to its end, unless it has to wait.

A streamed token is one `send` of a few hundred bytes. The server's send only waits when the
socket's buffer is full (flow control); otherwise it writes and returns without suspending. A
task per send, or a task per stream woken per token, costs more than the send itself, so the
event stream (app/api/event_stream.py) calls send from the callback that has the bytes ready
and only hands the rest to a task in the rare case the send waits: what Python 3.12's eager
tasks do, on 3.11.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import CoroutineType
from typing import Any

from starlette.types import Message, Send


def send_now(send: Send, message: Message) -> asyncio.Future[None] | None:
    """Run `send(message)` until it finishes or waits. None: it finished (it raised, if it
    failed). A task: it waits, and the task runs the rest (its result is the send's)."""
    coro = send(message)
    # An exact type check: isinstance against collections.abc.Coroutine is an ABC check, a
    # microsecond a token. Any other awaitable is run by a task.
    if type(coro) is not CoroutineType:
        return asyncio.ensure_future(coro)
    try:
        waiting_on = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_finish(coro, waiting_on))


async def _finish(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> None:
    """Go on with a coroutine that yielded `waiting_on` (what a Task would wait for: a future,
    or None for "let the loop go round once"), as the Task running it would."""
    while True:
        try:
            if waiting_on is None:
                await asyncio.sleep(0)
            else:
                waiting_on._asyncio_future_blocking = False  # as Task does with what it waits on
                await asyncio.wait((waiting_on,))
        except BaseException as exc:  # cancelled: so is what the send waited for, as in a Task
            if waiting_on is not None:
                waiting_on.cancel()
            try:
                waiting_on = coro.throw(exc)
            except StopIteration:
                return
            continue
        try:
            waiting_on = coro.send(None)  # the future is done: the send reads its result
        except StopIteration:
            return
