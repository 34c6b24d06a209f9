"""Backpressure and SIGTERM drain over real HTTP, each on a server of its own."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Server

LONG = {"prompt": "x", "max_tokens": 900, "ignore_eos": True, "stream": True}


def _first_event_then_rest(url: str, body: dict[str, object], started: list[bool]) -> list[str]:
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
        lines = [
            line
            for line in r.iter_lines()
            if line.startswith("data: ") and not started.append(True)
        ]  # type: ignore[func-returns-value]
    return lines


def test_full_queue_gets_429_with_retry_after(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = Server(tiny_model_dir, tmp_path / "log", max_num_seqs=1, max_queued_requests=1)
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            started: list[bool] = []
            futures = [
                pool.submit(_first_event_then_rest, server.url, LONG, started) for _ in range(2)
            ]
            deadline = time.monotonic() + 30
            while httpx.get(server.url + "/v1/engine/stats").json()["requests_in_flight"] < 2:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            r = httpx.post(server.url + "/v1/completions", json={"prompt": "y"}, timeout=10)
            assert r.status_code == 429, r.text
            assert int(r.headers["retry-after"]) >= 1
            assert "max_queued_requests" in r.text
            for f in futures:
                assert f.result()[-1] == "data: [DONE]"
    finally:
        assert server.stop() == 0


def test_sigterm_drains_then_exits(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = Server(tiny_model_dir, tmp_path / "log", drain_timeout_seconds=60)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started: list[bool] = []
        future = pool.submit(_first_event_then_rest, server.url, LONG, started)
        deadline = time.monotonic() + 30
        while not started:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while httpx.get(server.url + "/ready", timeout=5).status_code != 503:
            assert time.monotonic() < deadline, "readiness did not turn false on SIGTERM"
            time.sleep(0.02)
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "late"}, timeout=10)
        assert r.status_code == 503
        lines = future.result(timeout=120)
    final = json.loads(lines[-2][len("data: ") :])
    assert lines[-1] == "data: [DONE]" and final["choices"][0]["finish_reason"] == "length"
    try:
        assert server.proc.wait(30) == 0
    except Exception:
        pytest.fail(server.log_path.read_text()[-3000:])
    finally:
        server.stop()
