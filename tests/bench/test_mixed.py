"""The mixed-load scenario against a fake batched server whose long prompts stall every stream.

Under virtual time (tests/bench/virtual_time.py): the fake's token gaps and stalls and the
scenario's measurements read one clock, so each figure is what the fake's model of a batch
implies, exactly, whatever the load of the machine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.bench.mixed import MixedResult, MixedSettings, run_mixed
from tests.bench.virtual_time import VirtualClock

GAP = 0.02  # seconds between a stream's tokens
LONG = 100  # prompts of at least this many words are "long"


class FakeBatchServer:
    """Streams a token every GAP seconds; a long prompt takes `prefill` seconds before its first
    token and, while it prefills, holds back every other stream's next token (as one big
    prefill step does in a real batch)."""

    def __init__(self, prefill: float) -> None:
        self.prefill = prefill
        self.stall_until = 0.0
        self.open_streams = 0
        self.max_tokens_seen: list[int] = []

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "fake"}]})
        body = json.loads(request.content)
        self.max_tokens_seen.append(body["max_tokens"])
        return httpx.Response(200, content=self._events(body))

    async def _events(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        self.open_streams += 1
        try:
            loop = asyncio.get_running_loop()
            if len(body["prompt"].split()) >= LONG:
                self.stall_until = loop.time() + self.prefill
                await asyncio.sleep(self.prefill)
            for i in range(body["max_tokens"]):
                await asyncio.sleep(GAP)
                while loop.time() < self.stall_until:
                    await asyncio.sleep(self.stall_until - loop.time())
                chunk = {"choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]}
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            self.open_streams -= 1


def _run(clock: VirtualClock, server: FakeBatchServer, **settings: Any) -> MixedResult:
    async def go() -> MixedResult:
        async with httpx.AsyncClient(transport=server.transport()) as client:
            return await run_mixed(
                client,
                "http://fake.test",
                "fake",
                MixedSettings(streams=4, probe_prompt_len=LONG, probes=2, timeout=30, **settings),
            )

    return clock.run(go())


def test_measures_ttft_and_gaps_and_cancels_the_background_streams(clock: VirtualClock) -> None:
    server = FakeBatchServer(prefill=0.1)
    result = _run(clock, server)
    # 900-token background streams at 20 ms a token would run 18 s: they were cancelled.
    assert clock.now < 5
    assert server.open_streams == 0
    assert server.max_tokens_seen.count(900) == 4
    # A probe's first token: its prefill, then one token gap; alone or amid the streams (this
    # fake's prefill stalls the others, not itself).
    assert result.idle_ttft == pytest.approx([0.1 + GAP] * 2, abs=1e-9)
    assert result.busy_ttft == pytest.approx([0.1 + GAP] * 2, abs=1e-9)
    assert result.steady_itl_p50 == pytest.approx(GAP, abs=1e-9)
    assert result.ttft_ratio == pytest.approx(1.0)
    assert result.background_errors == 0


@pytest.mark.parametrize("prefill", [0.02, 0.4])
def test_a_prefill_that_stalls_the_batch_shows_in_the_gap_ratio(
    clock: VirtualClock, prefill: float
) -> None:
    """While a probe prefills, each stream's next token waits for the prefill's end: the gap
    that ends in the probe's window is at least the prefill and at most prefill + GAP (a token
    due the instant the probe arrives)."""
    result = _run(clock, FakeBatchServer(prefill=prefill))
    eps = 1e-9
    assert result.window_gaps > 0
    assert result.steady_itl_p50 == pytest.approx(GAP, abs=eps)
    assert prefill - eps <= result.window_itl_p99 <= prefill + GAP + eps
    assert prefill / GAP - eps <= result.itl_ratio <= prefill / GAP + 1 + eps
