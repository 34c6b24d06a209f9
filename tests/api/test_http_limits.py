"""Connection limits (issue 16 point 6), over raw sockets against the real uvicorn
configuration (app/cli.py's uvicorn_config) serving the app over the fake engine."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
import uvicorn

from app.cli import uvicorn_config
from app.config import Settings
from app.main import create_app
from tests.api.fakes import FakeEngineClient
from tests.api.live_server import running
from tests.e2e.server import free_port

TIMEOUT = 0.5  # the header and body deadlines these servers run with


def _serve(**limits: float) -> Iterator[int]:
    port = free_port()
    settings = Settings(model="fake-gpt2", host="127.0.0.1", port=port, **limits)  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn_config(create_app(settings, FakeEngineClient()), settings))
    with running(server):
        yield port


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    yield from _serve(header_timeout_seconds=TIMEOUT, body_timeout_seconds=TIMEOUT)


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(TIMEOUT * 10)  # far past the deadlines: the server acts first, or we fail
    return s


def _read_all(s: socket.socket) -> bytes:
    """Everything until the server closes the connection (a socket timeout fails the test)."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def _request(body: bytes, *headers: str) -> bytes:
    head = ["POST /v1/completions HTTP/1.1", "Host: t", "Content-Type: application/json"]
    return ("\r\n".join([*head, *headers]) + "\r\n\r\n").encode() + body


def test_a_connection_that_sends_no_headers_in_time_is_closed(port: int) -> None:
    idle, slow = _connect(port), _connect(port)
    slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\n")
    started = time.monotonic()
    for _ in range(3):  # slowloris: a header line now and then, never the end of the headers
        slow.sendall(b"X-Slow: 1\r\n")
        time.sleep(TIMEOUT / 4)
    assert _read_all(slow).startswith(b"HTTP/1.1 408")
    assert _read_all(idle).startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < TIMEOUT * 5


def _failures(port: int) -> float:
    metrics = _get(port, "/metrics").decode()
    [line] = [x for x in metrics.splitlines() if x.startswith(VALIDATION_FAILURES)]
    return float(line.split()[-1])


VALIDATION_FAILURES = 'gpt2_request_failure_total{reason="validation"}'


def test_a_body_that_does_not_arrive_in_time_is_a_408(port: int) -> None:
    before = _failures(port)
    s = _connect(port)
    s.sendall(_request(b'{"prompt"', "Content-Length: 100"))  # 9 of the 100 bytes, then nothing
    answer = _read_all(s)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert "did not arrive within 0.5 s" in body["error"]["message"]
    assert _failures(port) == before + 1  # counted once, as bad input


def test_content_length_with_transfer_encoding_is_refused_and_closed(port: int) -> None:
    """Either parser must refuse it: httptools does so itself (400, closed); behind h11, which
    would frame by the chunks and serve the 'smuggled' request behind them, the middleware
    does. Either way one answer, a 400, and the smuggled request never served."""
    chunk = b'{"prompt": "hi"}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk)
    smuggled = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
    s = _connect(port)
    s.sendall(_request(chunked + smuggled, "Content-Length: 4", "Transfer-Encoding: chunked"))
    answer = _read_all(s)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert answer.count(b"HTTP/1.1") == 1 and b"connection: close" in answer.lower()
    assert b"ambiguous framing" in answer or b"Invalid HTTP request" in answer


def _get(port: int, path: str) -> bytes:
    s = _connect(port)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    return _read_all(s)


def test_a_normal_request_and_keep_alive_still_work(port: int) -> None:
    s = _connect(port)
    body = b'{"prompt": "hi", "max_tokens": 2}'
    for _ in range(2):  # the same connection twice, the second after a pause under the deadline
        s.sendall(_request(body, f"Content-Length: {len(body)}"))
        answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        time.sleep(TIMEOUT / 2)
    s.close()


def test_connections_past_the_limit_get_503() -> None:
    for port in _serve(max_connections=4, header_timeout_seconds=30):
        held = [_connect(port) for _ in range(4)]
        time.sleep(0.1)  # let the server accept them
        s = _connect(port)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 503")
        for c in [*held, s]:
            c.close()
