"""A fake OpenAI completions server with known delays, as an httpx transport (no sockets).

Each streamed request: wait `ttft` seconds, then send `max_tokens` chunks `gap` seconds apart
(a chunk per token), a finish chunk, a usage chunk when asked, [DONE]. Behaviours by the
scenario given at construction: "ok", "hang" (never answers), "status" (answers `status`),
"stream_error" (an error event after the first token), "no_done" (ends without [DONE]),
"no_usage" (never sends a usage chunk).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


def _sse(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _chunk(text: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return _sse({"id": "cmpl-1", "object": "text_completion", "choices": [choice]})


@dataclass
class FakeOpenAI:
    scenario: str = "ok"
    ttft: float = 0.0
    gap: float = 0.0
    status: int = 429
    bodies: list[dict[str, Any]] = field(default_factory=list)  # every completion request

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "fake-gpt2"}]})
        if request.url.path != "/v1/completions":
            return httpx.Response(404, json={"error": "not found"})
        body = json.loads(request.content)
        self.bodies.append(body)
        if self.scenario == "hang":
            await asyncio.sleep(3600)
        if self.scenario == "status":
            return httpx.Response(self.status, json={"error": {"message": "queue full"}})
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=self._events(body)
        )

    async def _events(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        yield b": keep-alive\n\n"
        await asyncio.sleep(self.ttft)
        n = int(body["max_tokens"])
        for i in range(n):
            if i:
                await asyncio.sleep(self.gap)
            yield _chunk(f" t{i}")
            if self.scenario == "stream_error":
                yield _sse({"error": {"message": "worker lost", "code": 503}})
                yield b"data: [DONE]\n\n"
                return
        yield _chunk("", "length")
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        if include_usage and self.scenario != "no_usage":
            usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": n + 7}
            yield _sse({"id": "cmpl-1", "choices": [], "usage": usage})
        if self.scenario != "no_done":
            yield b"data: [DONE]\n\n"
