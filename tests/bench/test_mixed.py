"""The mixed-load scenario against a fake batched server whose long prompts stall every stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.bench.mixed import MixedResult, MixedSettings, run_mixed

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
            if len(body["prompt"].split()) >= LONG:
                self.stall_until = time.perf_counter() + self.prefill
                await asyncio.sleep(self.prefill)
            for i in range(body["max_tokens"]):
                await asyncio.sleep(GAP)
                while time.perf_counter() < self.stall_until:
                    await asyncio.sleep(self.stall_until - time.perf_counter())
                chunk = {"choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]}
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            self.open_streams -= 1


def _run(server: FakeBatchServer, **settings: Any) -> MixedResult:
    async def go() -> MixedResult:
        async with httpx.AsyncClient(transport=server.transport()) as client:
            return await run_mixed(
                client,
                "http://fake.test",
                "fake",
                MixedSettings(streams=4, probe_prompt_len=LONG, probes=2, timeout=30, **settings),
            )

    return asyncio.run(go())


def test_measures_ttft_and_gaps_and_cancels_the_background_streams() -> None:
    server = FakeBatchServer(prefill=0.1)
    started = time.perf_counter()
    result = _run(server)
    # 900-token background streams at 20 ms a token would run 18 s: they were cancelled.
    assert time.perf_counter() - started < 10
    assert server.open_streams == 0
    assert server.max_tokens_seen.count(900) == 4
    assert len(result.idle_ttft) == len(result.busy_ttft) == 2
    assert all(0.1 <= t < 0.5 for t in result.idle_ttft)
    assert result.steady_itl_p50 == pytest.approx(GAP, rel=0.5)
    assert result.background_errors == 0


def test_a_prefill_that_stalls_the_batch_shows_in_the_gap_ratio() -> None:
    short = _run(FakeBatchServer(prefill=0.02))
    stalling = _run(FakeBatchServer(prefill=0.4))
    assert stalling.window_gaps > 0
    assert stalling.window_itl_p99 >= 0.3  # the stall, seen by the running streams
    assert stalling.itl_ratio > 3 > short.itl_ratio
