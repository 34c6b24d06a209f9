"""The HTTP process's CPU per request, in process: what a streamed request costs besides its tokens.

Drives the app (create_app, every middleware and route as served) through ASGI calls, with the
API tests' scripted engine (no worker, no sockets): a streamed /v1/completions request of 2
tokens, one after another, timed in this thread's CPU time. Judges a change to routing,
validation, middleware, telemetry or a stream's set-up and teardown in seconds, without the
noise of a load test. `--tree DIR` runs another checkout's app (an older commit, say) with this
script, so two trees can be compared in one sitting:

    python -m benchmarks.request_cost
    python -m benchmarks.request_cost --tree ../base --rounds 5

Prints the median over rounds of µs per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any


async def one_request(app: Any, payload: bytes) -> bytes:
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "method": "POST",
        "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"",
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode())],
        "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000), "root_path": "", "state": {},
    }  # fmt: skip
    sent = False
    done = asyncio.Event()
    body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await done.wait()  # the client stays until the answer is complete
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            body.append(message.get("body", b""))
            if not message.get("more_body"):
                done.set()

    await app(scope, receive, send)
    return b"".join(body)


async def measure(rounds: int, requests: int) -> list[float]:
    from app.config import Settings
    from app.main import create_app
    from tests.api.fakes import FakeEngineClient

    app = create_app(Settings(model="fake-gpt2"), FakeEngineClient())
    request = {"prompt": "It is a truth universally acknowledged", "max_tokens": 2}
    payload = json.dumps({**request, "stream": True, "ignore_eos": True}).encode()
    answer = await one_request(app, payload)
    if not answer.endswith(b"data: [DONE]\n\n"):
        raise RuntimeError(f"unexpected answer: {answer[:500]!r}")
    for _ in range(requests // 3):  # warm-up
        await one_request(app, payload)
    results = []
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(requests):
            await one_request(app, payload)
        results.append(1e6 * (time.thread_time() - start) / requests)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", help="the checkout whose app to run (default: this one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000, help="per round")
    args = parser.parse_args()
    if args.tree:
        sys.path.insert(0, args.tree)
    results = asyncio.run(measure(args.rounds, args.requests))
    print("# python -m benchmarks.request_cost " + " ".join(sys.argv[1:]))
    print(
        f"µs per streamed request (2 tokens, in process): median {statistics.median(results):.0f}"
        f" over {args.rounds} rounds ({', '.join(f'{r:.0f}' for r in results)})"
    )


if __name__ == "__main__":
    main()
