"""One streamed OpenAI /v1/completions request, timed from send to the last event.

Times are time.perf_counter() seconds. A token arrival is a stream chunk whose choice carries
non-empty text (a chunk may carry more than one token when the server holds back a partial
character; the finish chunk with no text is not an arrival unless nothing else came). The
output token count is the usage's completion_tokens (asked for with
stream_options.include_usage; read from whichever chunk carries it: a separate last chunk, or
the finish chunk as llama-server sends it) when the server sends one, else the number of
arrivals.

Error kinds: "http_<status>" (e.g. http_429), "timeout" (the whole request, connect to last
byte, ran past its deadline), "connection" (refused, reset, closed early), "stream_error" (an
error event inside a 200 stream), "incomplete" (the stream ended without [DONE]), "protocol"
(a data line that is not JSON).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.bench.workload import RequestSpec


@dataclass
class RequestResult:
    send_time: float
    first_token_time: float | None = None
    token_times: list[float] = field(default_factory=list)  # arrival of each chunk with text
    chunks: list[str] = field(default_factory=list)  # the text of each of those chunks
    end_time: float | None = None
    output_tokens: int = 0
    prompt_tokens: int | None = None  # from usage, when the server reports it
    usage_reported: bool = False
    error: str | None = None  # None: success; else an error kind (module docstring)
    detail: str = ""
    requested_prompt_len: int | None = None
    requested_output_len: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def text(self) -> str:
        """The answer as streamed (a multi-turn conversation sends it back in the next prompt)."""
        return "".join(self.chunks)

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.send_time

    @property
    def latency(self) -> float | None:
        return None if self.end_time is None else self.end_time - self.send_time

    @property
    def gaps(self) -> list[float]:
        """Inter-token gaps: between consecutive arrivals."""
        return [b - a for a, b in itertools.pairwise(self.token_times)]

    @property
    def decode_span(self) -> float:
        """First arrival to last arrival."""
        return self.token_times[-1] - self.token_times[0] if self.token_times else 0.0


def completion_payload(
    spec: RequestSpec, model: str | None, *, ignore_eos: bool, temperature: float
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "prompt": spec.prompt,
        "max_tokens": spec.output_len,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if model is not None:
        payload["model"] = model
    if ignore_eos:
        payload["ignore_eos"] = True  # vLLM's extension; gpt2-serve and llama-server take it
    return payload


async def stream_completion(
    client: httpx.AsyncClient,
    url: str,
    payload: dict[str, Any],
    *,
    timeout: float,
) -> RequestResult:
    """POST one streamed completion to `url` (the full /v1/completions address). Never raises
    for the server's or the network's faults: they end up in RequestResult.error. Returns at
    the latest `timeout` seconds after it was called."""
    result = RequestResult(send_time=time.perf_counter())
    result.requested_output_len = int(payload.get("max_tokens", 0))
    try:
        async with asyncio.timeout(timeout):
            await stream_into(client, url, payload, result)
    except TimeoutError:
        _fail(result, "timeout", f"no complete answer in {timeout:g}s")
    except httpx.TimeoutException as exc:
        _fail(result, "timeout", repr(exc))
    except (httpx.TransportError, httpx.StreamError) as exc:
        _fail(result, "connection", repr(exc))
    if result.ok and not result.usage_reported:
        result.output_tokens = len(result.token_times)
    return result


def _fail(result: RequestResult, kind: str, detail: str) -> None:
    result.error, result.detail = kind, detail[:500]
    result.end_time = time.perf_counter()


async def stream_into(
    client: httpx.AsyncClient,
    url: str,
    payload: dict[str, Any],
    result: RequestResult,
) -> None:
    """Stream one completion, recording into `result` as chunks arrive. No timeout of its own:
    stream_completion adds one; a caller that cancels it (mixed.py) keeps what arrived."""
    async with client.stream("POST", url, json=payload) as response:
        if response.status_code != 200:
            body = await response.aread()
            _fail(result, f"http_{response.status_code}", body.decode(errors="replace"))
            return
        finish_time: float | None = None
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, ": keep-alive" comments, event:/id: fields
            data = line[len("data:") :].strip()
            now = time.perf_counter()
            if data == "[DONE]":
                if not result.token_times and finish_time is not None:
                    result.token_times.append(finish_time)  # a stream with no visible text
                if result.token_times:
                    result.first_token_time = result.token_times[0]
                result.end_time = now
                return
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError:
                _fail(result, "protocol", f"not JSON: {data[:200]}")
                return
            if not isinstance(chunk, dict):
                _fail(result, "protocol", f"not a JSON object: {data[:200]}")
                return
            if chunk.get("error") is not None:
                _fail(result, "stream_error", json.dumps(chunk["error"])[:500])
                return
            _note_usage(chunk, result)
            for choice in chunk.get("choices") or ():
                if choice.get("text"):
                    result.token_times.append(now)
                    result.chunks.append(choice["text"])
                    break
                if choice.get("finish_reason") is not None:
                    finish_time = now
        _fail(result, "incomplete", "the stream ended without [DONE]")


def _note_usage(chunk: dict[str, Any], result: RequestResult) -> None:
    usage = chunk.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        result.usage_reported = True
        result.output_tokens = usage["completion_tokens"]
        if isinstance(usage.get("prompt_tokens"), int):
            result.prompt_tokens = usage["prompt_tokens"]


async def served_model(client: httpx.AsyncClient, base_url: str) -> str | None:
    """The first model id of GET /v1/models, or None when the server does not say."""
    try:
        response = await client.get(base_url + "/v1/models")
        if response.status_code == 200:
            data = response.json().get("data") or []
            if data and isinstance(data[0].get("id"), str):
                return str(data[0]["id"])
    except (httpx.HTTPError, ValueError, AttributeError):
        pass
    return None
