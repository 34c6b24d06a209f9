"""A fake server for the chat workload, as an httpx transport (no sockets): streamed
/v1/completions whose time to first token is the prompt's uncached part, a word-level prefix
cache with gpt2-serve's two counters on /metrics, /tokenize and /v1/models' max_model_len.

A token is a whitespace-separated word. The cache: a prompt's hits are the words of the longest
earlier prompt + answer that the prompt starts with (a server that caches every finished
request whole). The counters start above zero, as on a server that has served before the run.
Each answer is `max_tokens` words naming its request (" r<request>w<i>"), so every answer is
different and a test can find it in a later prompt.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Served:
    prompt: str
    max_tokens: int
    start: float  # virtual time the request arrived
    end: float = -1.0  # ... and its [DONE] was sent
    hits: int = 0  # prompt words found in the cache
    answer: str = ""
    ttft: float = 0.0

    @property
    def tokens(self) -> int:
        return len(self.prompt.split())


@dataclass
class FakeChatServer:
    ttft_per_uncached_token: float = 0.001
    fixed_ttft: float = 0.0
    gap: float = 0.01
    max_model_len: int | None = None  # on GET /v1/models; None: not said
    tokenize: bool = True  # serve POST /tokenize
    metrics: bool = True  # serve the prefix cache counters on /metrics
    fail_status: int | None = None  # answer every completion with this status
    hits_total: int = 1000
    queries_total: int = 4000
    served: list[Served] = field(default_factory=list)
    open_streams: int = 0
    max_open_streams: int = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/models":
            card: dict[str, Any] = {"id": "fake-gpt2"}
            if self.max_model_len is not None:
                card["max_model_len"] = self.max_model_len
            return httpx.Response(200, json={"object": "list", "data": [card]})
        if path == "/metrics" and self.metrics:
            return httpx.Response(200, text=self.exposition())
        if path == "/tokenize" and self.tokenize:
            prompt = json.loads(request.content)["prompt"]
            count = len(prompt.split())
            return httpx.Response(200, json={"tokens": list(range(count)), "count": count})
        if path != "/v1/completions":
            return httpx.Response(404, json={"error": "not found"})
        body = json.loads(request.content)
        if self.fail_status is not None:
            return httpx.Response(self.fail_status, json={"error": {"message": "no"}})
        served = Served(body["prompt"], int(body["max_tokens"]), asyncio.get_running_loop().time())
        served.hits = max(
            (len((s.prompt + s.answer).split()) for s in self.served if s.end >= 0 and
             served.prompt.startswith(s.prompt + s.answer)),
            default=0,
        )  # fmt: skip
        served.ttft = self.fixed_ttft + self.ttft_per_uncached_token * (served.tokens - served.hits)
        self.hits_total += served.hits
        self.queries_total += served.tokens
        number = len(self.served)
        served.answer = "".join(f" r{number}w{i}" for i in range(served.max_tokens))
        self.served.append(served)
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=self._events(served)
        )

    def exposition(self) -> str:
        return (
            "# HELP gpt2_prefix_cache_hits_total Prompt tokens found in the prefix cache.\n"
            "# TYPE gpt2_prefix_cache_hits_total counter\n"
            f"gpt2_prefix_cache_hits_total {float(self.hits_total)}\n"
            "# HELP gpt2_prefix_cache_queries_total Prompt tokens looked up.\n"
            "# TYPE gpt2_prefix_cache_queries_total counter\n"
            f"gpt2_prefix_cache_queries_total {float(self.queries_total)}\n"
        )

    async def _events(self, served: Served) -> AsyncIterator[bytes]:
        self.open_streams += 1
        self.max_open_streams = max(self.max_open_streams, self.open_streams)
        # Closed before [DONE] goes out: a client that stops reading there never resumes the
        # generator, and `finally` would run only when it is collected.
        closed = False
        try:
            await asyncio.sleep(served.ttft)
            words = served.answer.split(" ")[1:]
            for i, word in enumerate(words):
                if i:
                    await asyncio.sleep(self.gap)
                yield _sse({"choices": [{"index": 0, "text": " " + word, "finish_reason": None}]})
            yield _sse({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})
            usage = {"prompt_tokens": served.tokens, "completion_tokens": served.max_tokens}
            yield _sse({"choices": [], "usage": usage})
            served.end = asyncio.get_running_loop().time()
            self.open_streams -= 1
            closed = True
            yield b"data: [DONE]\n\n"
        finally:
            if not closed:
                self.open_streams -= 1


def _sse(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"
