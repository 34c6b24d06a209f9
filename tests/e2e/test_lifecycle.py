"""Backpressure and SIGTERM drain over real HTTP, each on a server of its own.

The worker is paused (tests/processes.py) wherever the outcome would otherwise depend on how
fast it generates: requests stay in flight, or cannot finish before a deadline, for as long as
the test needs, on any machine. Streams get their headers after the keep-alive interval (0.5 s)
without a token. A paused worker also holds up the server's exit (multiprocessing joins it), so
the drain tests resume it once the service has let the request go (its request-log line)."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.server import Server
from tests.processes import paused

LONG = {"prompt": "x", "max_tokens": 900, "ignore_eos": True, "stream": True}


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Wait for an event that must come (bounded only so a bug fails instead of hanging)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


def _events(lines: Iterator[str]) -> list[Any]:
    return [
        "[DONE]" if line == "data: [DONE]" else json.loads(line[6:])
        for line in lines
        if line.startswith("data: ")
    ]


def _finish_reasons(events: list[Any]) -> list[str | None]:
    return [
        e["choices"][0]["finish_reason"] for e in events if isinstance(e, dict) and e.get("choices")
    ]


class Stream:
    """A streamed completion read to its end on a thread of its own."""

    def __init__(self, server: Server, body: dict[str, Any]) -> None:
        self._cm: AbstractContextManager[httpx.Response] = httpx.stream(
            "POST", server.url + "/v1/completions", json=body, timeout=120
        )
        self.response = self._cm.__enter__()
        assert self.response.status_code == 200, self.response.read()
        self.events: list[Any] = []
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            self.events.extend(_events(self.response.iter_lines()))
        except httpx.HTTPError as exc:  # the connection closed under the stream
            self.error = exc

    @property
    def ended(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float = 60) -> None:
        self._thread.join(timeout)
        assert self.ended, "the stream did not end"
        self._cm.__exit__(None, None, None)


def _request_logged(server: Server) -> bool:
    """The service let a generation request go (however it ended): its request-log line."""
    return '"request finished"' in server.log_path.read_text(errors="replace")


def test_full_queue_and_queued_tokens_get_429(tiny_model_dir: Path, tmp_path: Path) -> None:
    """--max-num-seqs 1 --max-queued-requests 1 --max-queued-tokens 600, with the worker paused
    so nothing is scheduled: a prompt that would pass 600 waiting tokens is refused, then a
    third request beyond the running place and the queued one; both admitted ones are then
    served in full."""
    server = Server(
        tiny_model_dir,
        tmp_path / "log",
        max_num_seqs=1,
        max_queued_requests=1,
        max_queued_tokens=600,
        keep_alive_seconds=0.5,
    )
    url = server.url + "/v1/completions"
    short = {**LONG, "max_tokens": 20}
    try:
        with paused(server.worker_pid) as pause:
            first = Stream(server, short)
            r = httpx.post(url, json={"prompt": [1] * 600, "max_tokens": 1}, timeout=10)
            assert r.status_code == 429, r.text
            assert "1 prompt tokens waiting, + 600 would pass the limit of 600" in r.text
            assert "(max_queued_tokens)" in r.text
            assert r.headers["retry-after"] == "1"  # nothing has finished yet: no rate known
            second = Stream(server, short)
            assert server.stats()["requests_in_flight"] == 2
            r = httpx.post(url, json={"prompt": "y"}, timeout=10)
            assert r.status_code == 429, r.text
            assert "the limit is 2 (max_num_seqs + max_queued_requests)" in r.text
            assert r.headers["retry-after"] == "1"
            pause.resume()
            first.join()
            second.join()
        for stream in (first, second):
            assert stream.error is None and stream.events[-1] == "[DONE]"
            assert _finish_reasons(stream.events)[-1] == "length"
    finally:
        assert server.stop() == 0


def test_sigterm_drains_then_exits(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = Server(
        tiny_model_dir, tmp_path / "log", drain_timeout_seconds=60, keep_alive_seconds=0.5
    )
    try:
        with paused(server.worker_pid):  # the stream cannot end before the drain has begun
            stream = Stream(server, LONG)
            server.proc.send_signal(signal.SIGTERM)
            _wait(
                lambda: httpx.get(server.url + "/ready", timeout=5).status_code == 503,
                "readiness turning false on SIGTERM",
            )
            r = httpx.post(server.url + "/v1/completions", json={"prompt": "late"}, timeout=10)
            assert r.status_code == 503
            assert not stream.ended
        stream.join()  # the worker resumed: the stream runs to its end
        assert stream.error is None and stream.events[-1] == "[DONE]"
        assert _finish_reasons(stream.events)[-1] == "length"
        assert server.proc.wait(60) == 0
    finally:
        server.stop()
    assert "Traceback" not in server.log_path.read_text()


def test_drain_timeout_ends_what_is_still_running_then_exits(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """--drain-timeout-seconds 2 and a request that cannot finish (its worker is paused): the
    drain waits the 2 s, not less, then the request is ended (never reaching its length) and
    the process exits cleanly."""
    server = Server(
        tiny_model_dir,
        tmp_path / "log",
        drain_timeout_seconds=2,
        keep_alive_seconds=0.5,
        log_level="INFO",
    )
    try:
        with paused(server.worker_pid):
            stream = Stream(server, LONG)
            server.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            _wait(
                lambda: stream.ended or _request_logged(server),
                "the request ended by the drain timeout",
            )
            waited = time.monotonic() - signalled
        stream.join()
        assert waited >= 2.0, "the request was ended before the drain timeout"
        assert "length" not in _finish_reasons(stream.events)
        assert server.proc.wait(60) == 0, server.log_path.read_text()[-3000:]
    finally:
        server.stop()


def test_a_second_signal_exits_at_once(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A 600 s drain is under way with a request that cannot finish (its worker is paused): a
    second signal lets the request go and the process exit within seconds, not 600."""
    server = Server(
        tiny_model_dir,
        tmp_path / "log",
        drain_timeout_seconds=600,
        keep_alive_seconds=0.5,
        log_level="INFO",
    )
    try:
        with paused(server.worker_pid):
            stream = Stream(server, LONG)
            server.proc.send_signal(signal.SIGTERM)
            _wait(
                lambda: httpx.get(server.url + "/ready", timeout=5).status_code == 503,
                "readiness turning false on the first signal",
            )
            server.proc.send_signal(signal.SIGTERM)
            _wait(
                lambda: stream.ended or _request_logged(server),
                "the request let go after a second signal",
                timeout=10,
            )
        _wait(lambda: server.proc.poll() is not None, "the process exiting", timeout=30)
        stream.join()
        assert "length" not in _finish_reasons(stream.events)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()  # a 600 s drain: do not wait for it
        server.stop()
