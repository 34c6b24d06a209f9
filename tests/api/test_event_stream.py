"""The event stream writes what arrived once the loop has run what was ready: a reader that keeps
up writes each event alone, one that is behind (or whose send had to wait) joins what arrived
meanwhile into one write, and nothing is lost, reordered or left running either way. Body
chunks go to the server's send past the middleware, which is safe only while every middleware
acts on the response's start alone: checked here for each one the app installs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Message, Receive, Scope, Send

from app.api.event_stream import SERVER_SEND, EventStreamResponse, StreamEvents
from app.api.middleware import APIKeyMiddleware, BodySizeLimitMiddleware, RequestIdMiddleware
from app.api.streams import ChoiceStreams, pumped
from app.api.telemetry import Telemetry, TelemetryMiddleware
from app.config import Settings
from app.engine.protocol import FinishReason, GenerationDelta
from app.main import create_app
from tests.api.fakes import FakeEngineClient


def _delta(k: int, last: bool) -> GenerationDelta:
    finish = FinishReason.LENGTH if last else None
    return GenerationDelta("r", f"t{k}", (k,), (), finish, 1, k + 1)


class _Events(StreamEvents):
    def delta(self, index: int, delta: GenerationDelta) -> bytes:
        return f"data: {delta.text}\n\n".encode()

    def end(self) -> bytes:
        return b"data: [DONE]\n\n"

    def error(self, exc: Exception) -> bytes:
        return f"data: error {exc}\n\n".encode()


def _expected(n: int) -> bytes:
    return b"".join(f"data: t{k}\n\n".encode() for k in range(n)) + b"data: [DONE]\n\n"


async def _never_disconnects() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def _serve(
    deltas: Callable[[], AsyncIterator[GenerationDelta]],
    send: Send,
    receive: Receive = _never_disconnects,
) -> ChoiceStreams:
    streams = ChoiceStreams([pumped(deltas)])
    await streams.start(prime_seconds=0.0)
    response = EventStreamResponse(streams, _Events(), keep_alive_seconds=None)
    # Bounded only so that a stream that never ends fails instead of hanging.
    await asyncio.wait_for(response({"type": "http"}, receive, send), timeout=30)
    return streams


class _Recorder:
    """An ASGI send that records each body message; `gate`, when set, makes a write wait."""

    def __init__(self) -> None:
        self.started = asyncio.Event()  # the response's start was sent: the stream is attached
        self.bodies: list[bytes] = []
        self.more: list[bool] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started.set()
        if message["type"] == "http.response.body":
            if self.gate is not None:
                await self.gate.wait()
            self.bodies.append(message["body"])
            self.more.append(message["more_body"])


def test_events_ready_at_once_go_out_in_one_write() -> None:
    sent = _Recorder()

    async def burst() -> AsyncIterator[GenerationDelta]:
        await sent.started.wait()
        for k in range(5):  # no await between deltas: one step of the engine's, say
            yield _delta(k, last=k == 4)

    asyncio.run(_serve(burst, sent))
    assert sent.bodies == [_expected(5)]  # one write, which also ends the body
    assert sent.more == [False]


def test_a_reader_that_keeps_up_writes_each_event_alone() -> None:
    sent = _Recorder()

    async def paced() -> AsyncIterator[GenerationDelta]:
        for k in range(5):
            while len(sent.bodies) < k:  # the next delta comes once the last one is written
                await asyncio.sleep(0)
            yield _delta(k, last=k == 4)

    asyncio.run(_serve(paced, sent))
    assert b"".join(sent.bodies) == _expected(5)
    assert len(sent.bodies) == 5  # the last carries [DONE] with the last token
    assert sent.more == [True] * 4 + [False]


def test_the_first_token_goes_out_behind_the_headers_in_the_same_turn() -> None:
    """A route waits for the first token before it answers (ChoiceStreams.start primes): that
    token is written right behind the headers, not a turn of the event loop later (on a busy
    loop a turn is long, and the client's TTFT would pay it)."""
    order: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                loop.call_soon(order.append, "next turn")
            elif message["body"]:
                order.append(message["body"].decode())

        async def two() -> AsyncIterator[GenerationDelta]:
            yield _delta(0, last=False)
            await asyncio.sleep(0)
            yield _delta(1, last=True)

        streams = ChoiceStreams([pumped(two)])
        await streams.start(prime_seconds=5.0)  # returns once the first token is in
        response = EventStreamResponse(streams, _Events(), keep_alive_seconds=None)
        await asyncio.wait_for(response({"type": "http"}, _never_disconnects, send), timeout=30)

    asyncio.run(main())
    assert order[0].startswith("data: t0\n\n") and order[1] == "next turn", order


def test_what_arrives_while_a_send_waits_goes_out_in_one_write_after_it() -> None:
    """Flow control: the server's send waits (a full socket buffer); the deltas that arrive
    meanwhile are neither lost nor written out of turn, and go out together once it is done."""
    sent = _Recorder()

    async def run() -> None:
        gate = sent.gate = asyncio.Event()
        delivered = 0

        async def deltas() -> AsyncIterator[GenerationDelta]:
            nonlocal delivered
            await sent.started.wait()
            for k in range(6):
                delivered = k + 1
                yield _delta(k, last=k == 5)
                await asyncio.sleep(0)  # each its own step: the first is written alone

        serving = asyncio.ensure_future(_serve(deltas, sent))
        while delivered < 6:
            await asyncio.sleep(0)
        assert sent.bodies == []  # the first write is still waiting
        gate.set()
        await serving

    asyncio.run(run())
    assert sent.bodies == [b"data: t0\n\n", _expected(6)[len(b"data: t0\n\n") :]]
    assert sent.more == [True, False]


def _endless(aborted: list[bool], pause: float) -> Callable[[], AsyncIterator[GenerationDelta]]:
    """A generation that never finishes; `aborted` records that it was stopped from outside."""

    async def deltas() -> AsyncIterator[GenerationDelta]:
        try:
            k = 0
            while True:
                yield _delta(k, last=False)
                k += 1
                await asyncio.sleep(pause)
        except (GeneratorExit, asyncio.CancelledError):
            aborted.append(True)
            raise

    return deltas


def test_a_failing_send_ends_the_response_and_aborts_the_generation() -> None:
    aborted: list[bool] = []

    async def broken(message: Message) -> None:
        if message["type"] == "http.response.body":
            raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        asyncio.run(_serve(_endless(aborted, 0.0), broken))
    assert aborted == [True]


def test_the_client_leaving_returns_and_aborts_the_generation() -> None:
    aborted: list[bool] = []
    sent = _Recorder()

    async def leaves() -> Message:
        while len(sent.bodies) < 3:
            await asyncio.sleep(0.001)
        return {"type": "http.disconnect"}

    asyncio.run(_serve(_endless(aborted, 0.001), sent, leaves))
    assert aborted == [True]
    assert len(sent.bodies) >= 3 and all(sent.more)  # it ended without a final chunk


def test_a_failed_generation_ends_with_the_error_event() -> None:
    async def failing() -> AsyncIterator[GenerationDelta]:
        yield _delta(0, last=False)
        raise RuntimeError("worker died")

    sent = _Recorder()
    asyncio.run(_serve(failing, sent))
    assert b"".join(sent.bodies) == b"data: t0\n\ndata: error worker died\n\n"
    assert sent.more[-1] is False


def test_the_server_send_is_in_the_scope_of_every_http_request(fake: FakeEngineClient) -> None:
    app = create_app(Settings(model="fake-gpt2"), fake)
    seen: list[Any] = []

    async def server_send(message: Message) -> None:
        pass

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def run() -> None:
        stack = app.build_middleware_stack()
        scope: Scope = {
            "type": "http",
            "method": "GET",
            "path": "/health",
            "headers": [],
            "query_string": b"",
            "app": app,
        }
        await stack(scope, receive, server_send)
        seen.append(scope.get(SERVER_SEND))

    asyncio.run(run())
    assert seen == [server_send]


def test_every_middleware_the_app_installs_passes_body_chunks_unchanged(
    fake: FakeEngineClient,
) -> None:
    """Body chunks skip the middleware (app/api/event_stream.py): that is only right while each
    middleware leaves them alone. A new middleware fails this list until it is checked too."""
    settings = Settings(model="fake-gpt2", cors_allow_origins=["https://example.org"])
    app = create_app(settings, fake)
    checked: dict[type, dict[str, Any]] = {
        RequestIdMiddleware: {},
        TelemetryMiddleware: {"telemetry": Telemetry(settings, engine=lambda: None)},
        APIKeyMiddleware: {"keys": []},
        BodySizeLimitMiddleware: {"max_bytes": 1 << 20},
        CORSMiddleware: {"allow_origins": ["https://example.org"]},
    }
    installed = {m.cls.__name__ for m in app.user_middleware}  # type: ignore[attr-defined]
    assert installed == {cls.__name__ for cls in checked}
    body = {"type": "http.response.body", "body": b"data: x\n\n", "more_body": True}

    for cls, kwargs in checked.items():
        received = _passes_through(cls, kwargs, body)
        assert received[-1] is body, cls.__name__


def _passes_through(cls: type, kwargs: dict[str, Any], body: Message) -> list[Message]:
    """What reaches the server's send when an app behind `cls` sends a start then `body`."""
    received: list[Message] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send(body)

    async def outer_send(message: Message) -> None:
        received.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/completions",
        "headers": [(b"origin", b"https://example.org")],  # CORS wraps send for these
        "query_string": b"",
        "state": {},
        "client": ("127.0.0.1", 1),
    }
    asyncio.run(cls(inner, **kwargs)(scope, receive, outer_send))
    return received
