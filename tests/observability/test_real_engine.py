"""End to end over the real engine (a tiny random GPT-2 on CPU) behind a real HTTP server:
metrics agree with what was served, failures by reason, the live gauges and /v1/engine/stats,
a real Prometheus scraping it and answering PromQL, and a killed worker."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.observability.conftest import Scrape, delta, wait_until

RULES = Path(__file__).resolve().parents[2] / "deploy/prometheus/rules/gpt2-serve-rules.yml"
OUTCOMES = ("gpt2_request_success_total", "gpt2_request_failure_total")


@dataclass
class Live:
    url: str
    app: FastAPI
    http: httpx.Client

    def scrape(self) -> Scrape:
        response = self.http.get("/metrics")
        assert response.status_code == 200
        return Scrape(response.text)


@pytest.fixture(scope="module")
def live(tiny_model_dir: Path) -> Iterator[Live]:
    settings = Settings(
        model=str(tiny_model_dir), device="cpu", max_num_seqs=4, keep_alive_seconds=1.0
    )
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 180
    while not server.started:  # uvicorn starts listening after the engine is ready
        assert thread.is_alive(), "the server failed to start"
        assert time.monotonic() < deadline, "the server did not start in time"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=60) as http:
        yield Live(url, app, http)
    server.should_exit = True
    thread.join(timeout=60)


def _served(before: Scrape, after: Scrape) -> float:
    return sum(after.total(n) - before.total(n) for n in OUTCOMES)


def _sse(text: str) -> list[Any]:
    return [
        json.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def _run(http: httpx.Client, kind: str, max_tokens: int) -> tuple[int, int]:
    """One request; (prompt tokens, completion tokens) as its answer reports them."""
    prompt = "The quick brown fox"
    if kind in ("completion", "completion_stream"):
        body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        if kind == "completion_stream":
            body |= {"stream": True, "stream_options": {"include_usage": True}}
            usage = [
                e for e in _sse(http.post("/v1/completions", json=body).text) if e.get("usage")
            ]
            u = usage[-1]["usage"]
        else:
            r = http.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            u = r.json()["usage"]
        return u["prompt_tokens"], u["completion_tokens"]
    if kind == "chat":
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()["usage"]["prompt_tokens"], r.json()["usage"]["completion_tokens"]
    params = {"max_new_tokens": max_tokens, "details": True}
    if kind == "generate":
        r = http.post("/generate", json={"inputs": prompt, "parameters": params})
        assert r.status_code == 200, r.text
        details = r.json()["details"]
    else:
        events = _sse(
            http.post("/generate_stream", json={"inputs": prompt, "parameters": params}).text
        )
        details = events[-1]["details"]
    return details["input_length"], details["generated_tokens"]


def test_prefix_cache_tokens_are_counted(live: Live) -> None:
    prompt = " ".join(["the river ran past the mill"] * 6)
    before = live.scrape()
    r = live.http.post(
        "/v1/completions", json={"prompt": prompt, "max_tokens": 2, "n": 3, "temperature": 0}
    )
    assert r.status_code == 200, r.text
    prompt_len = r.json()["usage"]["prompt_tokens"]  # counted once for the n choices
    assert prompt_len >= 17
    texts = {c["text"] for c in r.json()["choices"]}
    after = live.scrape()
    # Choices 2 and 3 wait for choice 1 to compute the prompt, then reuse its full 16-token
    # blocks (all but the last prompt token is eligible), and greedy agrees.
    assert delta(before, after, "gpt2_prefix_cache_queries_total") == 3 * prompt_len
    assert delta(before, after, "gpt2_prefix_cache_hits_total") == 2 * ((prompt_len - 1) // 16 * 16)
    assert len(texts) == 1
    # The same prompt again: every choice finds those blocks cached from the first request.
    r = live.http.post(
        "/v1/completions", json={"prompt": prompt, "max_tokens": 2, "n": 1, "temperature": 0}
    )
    cached = r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached == (prompt_len - 1) // 16 * 16
    assert r.json()["choices"][0]["text"] in texts


def test_counts_agree_with_what_the_real_engine_served(live: Live) -> None:
    kinds = ["completion", "completion_stream", "chat", "generate", "generate_stream", "completion"]
    before = live.scrape()
    served = [_run(live.http, kind, 4 + 3 * i) for i, kind in enumerate(kinds)]
    after = live.scrape()
    n = len(kinds)
    assert delta(before, after, "gpt2_time_to_first_token_seconds_count") == n
    assert delta(before, after, "gpt2_request_queue_time_seconds_count") == n
    assert delta(before, after, "gpt2_request_prefill_time_seconds_count") == n
    assert delta(before, after, "gpt2_e2e_request_latency_seconds_count") == n
    assert delta(before, after, "gpt2_generation_tokens_total") == sum(c for _, c in served)
    assert delta(before, after, "gpt2_prompt_tokens_total") == sum(p for p, _ in served)
    assert delta(before, after, "gpt2_request_prompt_tokens_sum") == sum(p for p, _ in served)
    assert delta(before, after, "gpt2_inter_token_latency_seconds_count") == sum(
        c - 1 for _, c in served
    )
    assert _served(before, after) == n
    assert after.total("gpt2_request_failure_total") == before.total("gpt2_request_failure_total")
    assert delta(before, after, "gpt2_engine_step_seconds_count") >= max(c for _, c in served)
    # Idle again: the gauges fed by the worker's steps read 0.
    for name in ("gpt2_num_requests_running", "gpt2_num_requests_waiting", "gpt2_batch_size"):
        assert after.value(name) == 0, name
    assert after.value("gpt2_worker_up") == 1 and after.value("gpt2_ready") == 1


def test_failures_by_reason_over_the_real_engine(live: Live) -> None:
    before = live.scrape()
    # Over the context window (1024): refused with 400.
    r = live.http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2000})
    assert r.status_code == 400
    # A deadline that runs out: 200, finish_reason timeout; counted as a failure, not a success.
    body = {"prompt": "Hi", "max_tokens": 1000, "ignore_eos": True, "timeout": 0.05}
    r = live.http.post("/v1/completions", json=body)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "timeout"
    # The caller leaves mid-stream.
    body = {"prompt": "Hi", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with live.http.stream("POST", "/v1/completions", json=body) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                break

    def disconnect_counted() -> bool:
        return (
            delta(before, live.scrape(), "gpt2_request_failure_total", reason="disconnected") == 1
        )

    wait_until(disconnect_counted, timeout=30, what="the disconnect to be counted")
    after = live.scrape()
    assert delta(before, after, "gpt2_request_failure_total", reason="validation") == 1
    assert delta(before, after, "gpt2_request_failure_total", reason="timeout") == 1
    assert _served(before, after) == 3, "each request once"
    assert delta(before, after, "gpt2_request_success_total", finished_reason="abort") == 0


def test_live_gauges_and_engine_stats_while_serving(live: Live) -> None:
    body = {"prompt": "Hi", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with live.http.stream("POST", "/v1/completions", json=body) as stream:
        lines = stream.iter_lines()
        next(line for line in lines if line.startswith("data: "))

        def busy() -> bool:
            s = live.scrape()
            return (
                s.value("gpt2_num_requests_running") >= 1
                and s.value("gpt2_kv_cache_usage_perc") > 0
                and s.value("gpt2_batch_size") >= 1
            )

        wait_until(busy, timeout=30, what="the gauges to show the running request")
        stats = live.http.get("/v1/engine/stats").json()
        assert stats["ready"] is True and stats["worker_alive"] is True
        assert stats["num_running"] >= 1 and stats["requests_in_flight"] >= 1
        assert 0 < stats["kv_blocks_used"] <= stats["kv_blocks_total"]
        assert 0 < stats["kv_cache_usage"] <= 1
        assert stats["last_batch"]["sequences"] >= 1
        assert stats["recent_step_ms"] and all(ms >= 0 for ms in stats["recent_step_ms"])
        assert stats["recent_step_seconds"]["count"] == len(stats["recent_step_ms"])


# --- a real Prometheus ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def prometheus(live: Live, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (Debian: apt-get install prometheus)")
    target = live.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: gpt2-serve\n    scrape_interval: 1s\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=60, what="prometheus to start")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _query(prometheus: str, promql: str) -> list[float]:
    r = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    assert r.status_code == 200, r.text
    return [float(sample["value"][1]) for sample in r.json()["data"]["result"]]


def test_prometheus_scrapes_the_service_and_answers_promql(live: Live, prometheus: str) -> None:
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=live.url, timeout=30) as http:
            while not stop.is_set():
                http.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 8})

    workers = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        found: dict[str, list[float]] = {}

        def answered(name: str, promql: str) -> bool:
            values = [v for v in _query(prometheus, promql) if math.isfinite(v) and v > 0]
            if values:
                found[name] = values
            return bool(values)

        wait_until(
            lambda: answered("tokens", "sum(rate(gpt2_generation_tokens_total[5s])) > 0"),
            timeout=60,
            what="rate(gpt2_generation_tokens_total) > 0 in Prometheus",
        )
        ttft = (
            "histogram_quantile(0.9, sum by (le) "
            "(rate(gpt2_time_to_first_token_seconds_bucket[10s])))"
        )
        wait_until(lambda: answered("ttft", ttft), timeout=30, what="a TTFT quantile")
        wait_until(
            lambda: answered("recorded", "job:gpt2_generation_tokens:rate1m"),
            timeout=30,
            what="the recording rule to produce a value",
        )
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
    assert found["ttft"][0] < 60  # seconds: a real latency, not a bucket bound at +Inf
    targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]
    assert [t["health"] for t in targets["activeTargets"]] == ["up"]
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert {g["name"] for g in groups} == {"gpt2-serve.recording", "gpt2-serve.alerts"}
    assert all(rule["health"] != "err" for g in groups for rule in g["rules"])


# --- last: kills the worker -----------------------------------------------------------------


def test_killed_worker_counts_worker_lost_and_a_restart(live: Live) -> None:
    engine = live.app.state.engine
    before = live.scrape()
    body = {"prompt": "Hi", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with live.http.stream("POST", "/v1/completions", json=body) as stream:
        lines = stream.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        os.kill(engine.worker.pid, signal.SIGKILL)
        rest = "\n".join(lines)
    assert '"error"' in rest  # the stream ends with an error event
    wait_until(lambda: live.scrape().value("gpt2_worker_restarts_total") >= 1, timeout=30)
    wait_until(lambda: live.http.get("/ready").status_code == 200, timeout=180, what="restart")
    after = live.scrape()
    assert delta(before, after, "gpt2_request_failure_total", reason="worker_lost") == 1
    assert _served(before, after) == 1
    assert delta(before, after, "gpt2_worker_restarts_total") == 1
    assert after.value("gpt2_worker_up") == 1 and after.value("gpt2_ready") == 1
