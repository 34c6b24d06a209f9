"""The HTTP stack's own floor: CPU µs per streamed token of a server that does nothing but stream.

benchmarks.host_cost says what gpt2-serve's HTTP process spends per streamed token. This says how
much of that the stack under it costs by itself, on the same machine, driven the same way
(`gpt2-serve bench`, 32-token prompts, 128 tokens a request, 64 and 256 streams): a stand-in
server that answers /v1/completions with an OpenAI event stream, one chunk per stream per tick
of a timer (a stand-in for the engine's step), with no engine, tokenizer, validation beyond
parsing, or metrics. Two stand-ins:

- `asgi`: a bare ASGI callable on uvicorn (what any Python ASGI server pays: HTTP parsing, the
  ASGI messages, the write syscall per chunk);
- `fastapi`: the same behind a FastAPI route with a pydantic body (adds routing, validation and
  the response machinery, once per request).

Each writes its chunks the way gpt2-serve does (one eager send per stream per tick, the
stream's chunk built from a template), so the difference between `host_cost` and this is
what gpt2-serve itself adds.

    python -m benchmarks.http_floor                      # both stand-ins, 64 and 256 streams
    python -m benchmarks.http_floor --kinds asgi --streams 256 --requests 1024
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.responses import Response

from app.api.eager_send import send_now

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]

MODEL = "floor"
_HEAD = b'data: {"id":"cmpl-floor","object":"text_completion","created":0,"model":"floor",'
_CHOICE = b'"choices":[{"index":0,"text":%s,"logprobs":null,"finish_reason":%s}]}\n\n'
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


class _Ticker:
    """Every `interval` seconds, one chunk to every live stream (the engine's step, stood in)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.live: list[_Stream] = []
        self.tokens = 0
        self._task: asyncio.Task[None] | None = None

    def add(self, stream: _Stream) -> None:
        self.live.append(stream)
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            still = []
            for stream in self.live:
                self.tokens += 1
                if stream.step():
                    still.append(stream)
            self.live = still


class _Stream:
    def __init__(self, send: Send, max_tokens: int) -> None:
        self.send = send
        self.left = max_tokens
        self.emitted = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def step(self) -> bool:
        """Write one token's chunk (and the usage chunk and [DONE] after the last)."""
        self.left -= 1
        self.emitted += 1
        last = self.left == 0
        body = _HEAD + _CHOICE % (b'" tok"', b'"length"' if last else b"null")
        if last:
            usage = {"prompt_tokens": 32, "completion_tokens": self.emitted,
                     "total_tokens": 32 + self.emitted}  # fmt: skip
            body += _HEAD + b'"choices":[],"usage":' + json.dumps(usage).encode() + b"}\n\n"
            body += b"data: [DONE]\n\n"
        message = {"type": "http.response.body", "body": body, "more_body": not last}
        waiting = send_now(self.send, message)
        if last:
            if waiting is None:
                self.done.set_result(None)
            else:
                waiting.add_done_callback(lambda _: self.done.set_result(None))
        return not last


async def _stream_response(ticker: _Ticker, send: Send, max_tokens: int) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
    stream = _Stream(send, max_tokens)
    ticker.add(stream)
    await stream.done


async def _json(send: Send, payload: object) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def asgi_app(ticker: _Ticker) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/v1/completions":
            chunks = []
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            body = json.loads(b"".join(chunks))
            await _stream_response(ticker, send, int(body["max_tokens"]))
        elif path == "/v1/models":
            await _json(send, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        else:  # /ready, /stats
            await _json(send, {"pid": os.getpid(), "tokens": ticker.tokens})

    return app


class _StreamOptions(BaseModel):
    include_usage: bool = False


class _Completion(BaseModel):
    """The fields `gpt2-serve bench` sends, validated as a real route would."""

    prompt: str
    max_tokens: int
    model: str | None = None
    temperature: float = 1.0
    stream: bool = False
    stream_options: _StreamOptions | None = None
    ignore_eos: bool = False


def fastapi_app(ticker: _Ticker) -> FastAPI:
    class Pushed(Response):
        def __init__(self, max_tokens: int) -> None:
            self.max_tokens = max_tokens
            self.background = None

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await _stream_response(ticker, send, self.max_tokens)

    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(body: _Completion) -> Response:
        return Pushed(body.max_tokens)

    @app.get("/v1/models")
    async def models() -> dict[str, object]:
        return {"object": "list", "data": [{"id": MODEL, "object": "model"}]}

    @app.get("/ready")
    @app.get("/stats")
    async def stats() -> dict[str, int]:
        return {"pid": os.getpid(), "tokens": ticker.tokens}

    return app


def serve(kind: str, host: str, port: int, interval: float) -> None:
    import uvicorn

    ticker = _Ticker(interval)
    app = asgi_app(ticker) if kind == "asgi" else fastapi_app(ticker)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def run_point(
    url: str, streams: int, requests: int, output_len: int, out: Path
) -> dict[str, float]:
    from benchmarks.host_cost import cpu_seconds
    from benchmarks.serve_bench import ROOT

    before = httpx.get(url + "/stats", timeout=10).json()
    pid = int(before["pid"])
    cpu0 = cpu_seconds(pid)
    system0 = cpu_seconds(pid, "system")
    argv = [
        sys.executable, "-m", "app.cli", "bench", "--url", url, "--concurrency", str(streams),
        "--num-requests", str(requests), "--warmup", str(streams), "--prompt-len", "32",
        "--output-len", str(output_len), "--ignore-eos", "--no-progress", "--no-metrics-check",
        "--json", str(out / f"floor_{streams}.json"),
    ]  # fmt: skip
    start = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    wall = time.monotonic() - start
    cpu = cpu_seconds(pid) - cpu0
    system = cpu_seconds(pid, "system") - system0
    tokens = httpx.get(url + "/stats", timeout=10).json()["tokens"] - before["tokens"]
    return {
        "streams": streams,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "us_per_request": 1e6 * cpu / (requests + streams),
        "us_per_token": 1e6 * cpu / tokens,
        "system_share": system / max(cpu, 1e-9),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=["asgi", "fastapi"], help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--kinds", nargs="+", default=["asgi", "fastapi"])
    parser.add_argument("--streams", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--requests", type=int, default=None, help="per point (4 x streams)")
    parser.add_argument("--output-len", type=int, default=128, help="tokens a request")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="the stand-in step")
    parser.add_argument("--out", type=Path, default=Path(".cache/http_floor"))
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.host, args.port, args.interval_ms / 1000)
        return
    from benchmarks.serve_bench import server

    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.http_floor " + shlex.join(sys.argv[1:])
    rows = []
    for kind in args.kinds:
        cmd = ["-m", "benchmarks.http_floor", "--serve", kind, "--interval-ms",
               str(args.interval_ms)]  # fmt: skip
        with server(cmd, "/ready", args.out / f"{kind}.log") as url:
            for streams in args.streams:
                requests = args.requests or 4 * streams
                row = run_point(url, streams, requests, args.output_len, args.out)
                rows.append({"kind": kind, **row})
    print(f"# {command}")
    print("stand-in  streams  tokens/s  HTTP process us/token (kernel)  us/request")
    for r in rows:
        print(
            f"{r['kind']:8s}  {r['streams']:7d}  {r['tokens_per_s']:8.0f}  "
            f"{r['us_per_token']:22.1f} ({r['system_share']:4.0%})  {r['us_per_request']:10.0f}"
        )
    (args.out / "http_floor.json").write_text(json.dumps({"command": command, "rows": rows}))


if __name__ == "__main__":
    main()
