from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.streams import (
    ChoiceStreams,
    ClientDisconnected,
    Starter,
    collect_unless_disconnected,
    pumped,
)
from app.config import Settings
from app.engine.errors import OverloadedError
from app.engine.protocol import SamplingParams
from app.main import create_app
from tests.api.conftest import sse_events
from tests.api.fakes import FakeEngineClient


def test_keep_alive_comments_while_idle(fake: FakeEngineClient) -> None:
    fake.token_delay = 0.25
    settings = Settings(model="fake-gpt2", keep_alive_seconds=0.05)
    with TestClient(create_app(settings, fake)) as client:
        r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "stream": True})
    events = sse_events(r.text)
    assert ": keep-alive" in events
    data = [e for e in events if e != ": keep-alive"]
    assert [e["choices"][0]["text"] for e in data[:-1]] == [" ", "t"]
    assert data[-1] == "[DONE]"


def test_tgi_stream_keep_alive(fake: FakeEngineClient) -> None:
    fake.token_delay = 0.2
    settings = Settings(model="fake-gpt2", keep_alive_seconds=0.05)
    with TestClient(create_app(settings, fake)) as client:
        r = client.post(
            "/generate_stream", json={"inputs": "Hi", "parameters": {"max_new_tokens": 1}}
        )
    assert ": keep-alive" in sse_events(r.text)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/generate_stream"])
def test_client_disconnect_aborts_the_request(
    client: TestClient, fake: FakeEngineClient, path: str
) -> None:
    fake.hold_after = 1  # one token each, then the requests can only end by an abort
    body: dict[str, Any] = {
        "/v1/completions": {"prompt": "Hi", "max_tokens": 100, "stream": True, "n": 2},
        "/v1/chat/completions": {
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 100,
            "stream": True,
        },
        "/generate_stream": {"inputs": "Hi", "parameters": {"max_new_tokens": 100}},
    }[path]
    fake.script = "x" * 200
    with client.stream("POST", path, json=body) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    ids = sorted(c.request_id for c in fake.calls)
    # The worker's own state: each request got an AbortRequest and stopped generating. (Without
    # the abort the scripted worker runs on to 100 tokens and no abort ever comes: the bounded
    # wait fails, whatever the speed of the machine.)
    _wait_until(lambda: sorted(fake.worker_aborts) == ids and not fake.worker_running)
    assert all(fake.worker_tokens[rid] == 1 for rid in ids)
    assert sorted(fake.aborted) == ids
    assert fake.finished == []


def _wait_until(predicate: Any, timeout: float = 30.0) -> None:
    """Wait for an event that must come (bounded only so a bug fails instead of hanging)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the event never came"
        time.sleep(0.01)


def _fake_request(disconnect_after: float | None) -> Any:
    class Request:
        async def receive(self) -> dict[str, str]:
            if disconnect_after is None:
                await asyncio.sleep(3600)
            else:
                await asyncio.sleep(disconnect_after)
            return {"type": "http.disconnect"}

    return Request()


def _starter(fake: FakeEngineClient, params: SamplingParams, request_id: str) -> Starter:
    return lambda sink: fake.add_request([1], params, request_id=request_id, sink=sink)


def test_non_streamed_request_is_aborted_when_client_leaves(fake: FakeEngineClient) -> None:
    fake.hold_after = 1
    params = SamplingParams(max_tokens=100)

    async def run() -> None:
        streams = ChoiceStreams([_starter(fake, params, f"r{i}") for i in range(2)])
        with pytest.raises(ClientDisconnected):
            await collect_unless_disconnected(streams, _fake_request(0.05))

    asyncio.run(run())
    assert sorted(fake.aborted) == ["r0", "r1"]
    assert sorted(fake.worker_aborts) == ["r0", "r1"] and not fake.worker_running


def test_one_disconnect_watcher_serves_the_whole_request(fake: FakeEngineClient) -> None:
    """start() watches for the client from the first moment; the reader after it shares that
    watcher (one receive() waiting for the whole request, not one per phase), which still
    aborts the generation when the client leaves, and closing the streams ends it."""
    fake.hold_after = 1
    receives = 0

    class Request:
        async def receive(self) -> dict[str, str]:
            nonlocal receives
            receives += 1
            await asyncio.sleep(0.2)
            return {"type": "http.disconnect"}

    async def run() -> None:
        request: Any = Request()
        streams = ChoiceStreams([_starter(fake, SamplingParams(max_tokens=100), "r0")])
        await streams.start(30.0, request)  # returns at the first delta, well before 0.2 s
        with pytest.raises(ClientDisconnected):
            await collect_unless_disconnected(streams, request)
        assert streams.client_gone is not None and streams.client_gone.done()

    asyncio.run(run())
    assert receives == 1
    assert fake.aborted == ["r0"]
    assert fake.worker_aborts == ["r0"] and not fake.worker_running


def test_collect_returns_every_choice_in_order(fake: FakeEngineClient) -> None:
    async def run() -> list[list[str]]:
        starters = [_starter(fake, SamplingParams(max_tokens=3, seed=i), str(i)) for i in range(3)]
        results = await collect_unless_disconnected(ChoiceStreams(starters), _fake_request(None))
        return [[d.text for d in deltas] for deltas in results]

    assert asyncio.run(run()) == [["<", "0", ">"], ["<", "1", ">"], ["<", "2", ">"]]


def _refused(sink: Any) -> Any:  # as the engine's add_request refuses: at once
    raise OverloadedError("full", retry_after=2)


async def _refused_stream() -> Any:  # as generate() refuses: on the first iteration
    raise OverloadedError("full", retry_after=2)
    yield


@pytest.mark.parametrize(
    "rejected", [_refused, pumped(_refused_stream)], ids=["add_request", "generate"]
)
def test_start_raises_the_first_rejection_and_aborts_the_rest(
    fake: FakeEngineClient, rejected: Starter
) -> None:
    fake.hold_after = 0

    async def run() -> None:
        streams = ChoiceStreams([_starter(fake, SamplingParams(max_tokens=50), "a"), rejected])
        with pytest.raises(OverloadedError):
            await streams.start(prime_seconds=1.0)

    asyncio.run(run())
    assert fake.aborted == ["a"]
    assert fake.worker_aborts == ["a"] and not fake.worker_running


def test_synchronous_rejection_from_generate_is_handled(fake: FakeEngineClient) -> None:
    """An engine whose generate() raises on call (not on first iteration) is handled alike."""

    def raising() -> Any:
        raise OverloadedError("full", retry_after=1)

    async def run() -> None:
        with pytest.raises(OverloadedError):
            await ChoiceStreams([pumped(raising)]).start(prime_seconds=1.0)

    asyncio.run(run())


def test_a_pumped_generate_stream_is_aborted_by_aclose(fake: FakeEngineClient) -> None:
    """The fallback for a source with only generate(): a task reads it; aclose cancels the task,
    which closes generate(), which aborts the request, before aclose returns."""
    fake.hold_after = 1
    params = SamplingParams(max_tokens=100)

    async def run() -> list[str]:
        streams = ChoiceStreams([pumped(lambda: fake.generate([1], params, request_id="g"))])
        await streams.start(prime_seconds=5.0)
        await streams.aclose()
        return list(fake.worker_aborts)

    assert asyncio.run(run()) == ["g"]
    assert fake.aborted == ["g"] and not fake.worker_running
