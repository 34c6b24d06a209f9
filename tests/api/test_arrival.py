"""The engine's timings of a request (TTFT, end to end, the histograms) start when the HTTP
request arrives, not when the route hands it to the engine: a body that takes its time to
arrive, its parsing, validation and tokenization count, as they do for the caller."""

from __future__ import annotations

import json
import socket
import time

import uvicorn

from app.cli import uvicorn_config
from app.config import Settings
from app.main import create_app
from tests.api.fakes import FakeEngineClient
from tests.api.live_server import running
from tests.e2e.server import free_port

PAUSE = 0.3  # seconds between the request's headers and the end of its body


def _ttft_sum(port: int) -> float:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    text = _read_all(s).decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gpt2_time_to_first_token_seconds_sum")
    )


def _read_all(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def test_timings_start_when_the_request_arrives() -> None:
    port = free_port()
    settings = Settings(model="fake-gpt2", host="127.0.0.1", port=port)
    fake = FakeEngineClient()
    app = create_app(settings, fake)
    fake.sink = app.state.telemetry.on_record  # the engine's records feed the metrics
    server = uvicorn.Server(uvicorn_config(app, settings))
    with running(server):
        before = _ttft_sum(port)
        body = b'{"prompt": "hi", "max_tokens": 2}'
        head = (
            "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        sent = time.monotonic()
        s.sendall(head + body[:5])
        time.sleep(PAUSE)
        s.sendall(body[5:])
        answer = _read_all(s)
        after = _ttft_sum(port)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    timings = json.loads(answer.split(b"\r\n\r\n", 1)[1])["timings"]
    assert timings["ttft_ms"] >= PAUSE * 1000
    assert timings["total_ms"] >= timings["ttft_ms"]
    assert after - before >= PAUSE  # the TTFT histogram saw the same
    (call,) = fake.calls
    assert call.arrival is not None and sent <= call.arrival <= sent + PAUSE / 2
