"""--api-workers 2 over real HTTP: two HTTP processes on one port in front of one worker.

Each test knows which process serves each of its connections (the kernel's socket tables say
which process holds the accepted socket), so "through either process" is checked on both, not
left to where the kernel happened to send a connection."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import Server
from tests.observability.conftest import Scrape, promtool
from tests.observability.test_exposition import COUNTERS, GAUGES, HISTOGRAMS

OUTCOMES = ("gpt2_request_success_total", "gpt2_request_failure_total")
LONG = {"prompt": "x", "max_tokens": 900, "ignore_eos": True, "stream": True}


def _wait(predicate: Any, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not reached in {timeout}s: {what}"
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _socket_inode(local_port: int, remote_port: int) -> int | None:
    """The inode of a loopback socket of the server's (/proc/net/tcp); remote_port 0: the
    listening one."""
    local = f"0100007F:{local_port:04X}"
    remote = f"0100007F:{remote_port:04X}" if remote_port else "00000000:0000"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return int(fields[9])
    return None


def _holds(pid: int, inode: int) -> bool:
    link = f"socket:[{inode}]"
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == link:
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def api_pids(server: Server) -> set[int]:
    """The HTTP processes: the supervisor's children that hold the listening socket."""
    listening = _socket_inode(server.port, 0)
    assert listening is not None
    return {p for p in _children(server.proc.pid) if _holds(p, listening)}


def serving_process(server: Server, conn: http.client.HTTPConnection, pids: set[int]) -> int:
    """Which of `pids` accepted this (connected) connection."""
    client_port = conn.sock.getsockname()[1]
    found: list[int] = []

    def accepted() -> bool:
        inode = _socket_inode(server.port, client_port)
        if inode is not None:
            found.extend(pid for pid in pids if _holds(pid, inode))
        return bool(found)

    _wait(accepted, timeout=10, what="an API process accepts the connection")
    return found[0]


def connection_per_process(server: Server) -> dict[int, http.client.HTTPConnection]:
    """One open connection served by each API process (connects until each has one)."""
    pids = api_pids(server)
    conns: dict[int, http.client.HTTPConnection] = {}
    for _ in range(200):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.connect()
        pid = serving_process(server, conn, pids)
        if pid in conns:
            conn.close()
        else:
            conns[pid] = conn
        if len(conns) == len(pids):
            return conns
    raise AssertionError(f"connections reached only {sorted(conns)} of {sorted(pids)}")


def request(
    conn: http.client.HTTPConnection, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn.request(
        method,
        path,
        body=json.dumps(body) if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    r = conn.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def start_stream(conn: http.client.HTTPConnection, body: dict[str, Any]) -> Any:
    """POST a streamed completion; return the response once its first token event has come."""
    headers = {"Content-Type": "application/json"}
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
    r = conn.getresponse()
    assert r.status == 200, r.read()
    while not r.readline().startswith(b"data: {"):
        pass
    return r


def rest_of_stream(r: Any) -> list[Any]:
    events = []
    for raw in r:
        line = raw.decode().rstrip("\n")
        if line.startswith("data: "):
            events.append("[DONE]" if line == "data: [DONE]" else json.loads(line[6:]))
    return events


def scrape(conn: http.client.HTTPConnection) -> Scrape:
    status, _, body = request(conn, "GET", "/metrics")
    assert status == 200
    return Scrape(body.decode())


def served(s: Scrape) -> float:
    return sum(s.total(name) for name in OUTCOMES)


@pytest.fixture(scope="module")
def server2(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("logs") / "server.log"
    s = Server(
        tiny_model_dir,
        log,
        api_workers=2,
        max_num_seqs=4,
        max_queued_requests=4,
        drain_timeout_seconds=5,  # a failed test's streams must not outlast the stop
    )
    yield s
    assert s.stop() == 0, s.log_path.read_text()[-3000:]


def test_two_processes_serve_one_port_and_metrics_count_each_request_once(
    server2: Server,
) -> None:
    conns = connection_per_process(server2)
    assert len(conns) == 2
    before = {pid: scrape(conn) for pid, conn in conns.items()}
    sent = 0
    for _ in range(3):
        for conn in conns.values():
            short = {"prompt": "Hi", "max_tokens": 5, "ignore_eos": True}
            status, _, body = request(conn, "POST", "/v1/completions", short)
            assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 5
            r = start_stream(conn, {**short, "stream": True})
            assert rest_of_stream(r)[-1] == "[DONE]"
            sent += 2
    # Both processes' /metrics, each counting every request once, whichever process served it.
    for pid, conn in conns.items():
        _wait(
            lambda conn=conn, pid=pid: served(scrape(conn)) - served(before[pid]) >= sent,
            what="every request counted",
        )
        after = scrape(conn)
        assert served(after) - served(before[pid]) == sent
        assert (
            after.value("gpt2_request_success_total", finished_reason="length")
            - before[pid].value("gpt2_request_success_total", finished_reason="length")
            == sent
        )
        tokens = after.value("gpt2_generation_tokens_total")
        assert tokens - before[pid].value("gpt2_generation_tokens_total") == 5 * sent
        ttft = after.value("gpt2_time_to_first_token_seconds_count")
        assert ttft - before[pid].value("gpt2_time_to_first_token_seconds_count") == sent
        assert after.value("gpt2_worker_up") == 1 and after.value("gpt2_ready") == 1

    # The worker's steps are counted once (by one process), not once per process.
    def steps() -> list[float]:
        return [scrape(c).value("gpt2_engine_step_seconds_count") for c in conns.values()]

    _wait(lambda: len(set(steps())) == 1, what="both processes' scrapes agree")
    counted = steps()[0] - next(iter(before.values())).value("gpt2_engine_step_seconds_count")
    # Counted once: 5 tokens are 5 steps a request (6 with slack), twice would be 10.
    assert 0 < counted <= 6 * sent, counted
    for conn in conns.values():
        conn.close()


def test_every_metric_is_exposed_by_each_process_and_promtool_accepts_it(
    server2: Server,
) -> None:
    for conn in connection_per_process(server2).values():
        status, _, body = request(conn, "GET", "/metrics")
        assert status == 200
        s = Scrape(body.decode())
        for name in HISTOGRAMS:
            assert s.families[name].type == "histogram", name
        for name in COUNTERS:
            assert s.families[name].type == "counter", name
        for name in GAUGES:
            assert s.families[name].type == "gauge", name
        assert len(s.text.splitlines()) == len(set(s.text.splitlines()))  # no family twice
        tool = promtool()
        checked = subprocess.run(
            [tool, "check", "metrics"], input=body.decode(), capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        conn.close()


def test_disconnect_aborts_through_either_process(server2: Server) -> None:
    conns = connection_per_process(server2)
    probe = http.client.HTTPConnection("127.0.0.1", server2.port, timeout=60)
    before = scrape(probe)
    streams = [start_stream(conn, LONG) for conn in conns.values()]
    assert len(streams) == 2
    _wait(  # the worker's figures reach each process with the next step
        lambda: json.loads(request(probe, "GET", "/v1/engine/stats")[2])["num_running"] == 2,
        what="both requests running in the worker",
    )
    for conn in conns.values():
        conn.close()  # hang up mid-stream

    def gone() -> bool:
        s = scrape(probe)
        disconnected = s.value("gpt2_request_failure_total", reason="disconnected")
        return (
            disconnected - before.value("gpt2_request_failure_total", reason="disconnected") == 2
            and s.value("gpt2_num_requests_in_flight") == 0
        )

    _wait(gone, what="both requests counted as disconnected, none in flight")
    for conn in connection_per_process(server2).values():  # each process's view of the worker
        stats = json.loads(request(conn, "GET", "/v1/engine/stats")[2])
        assert stats["requests_in_flight"] == 0
        assert stats["num_running"] == 0 and stats["kv_blocks_used"] == 0
        conn.close()
    probe.close()


def test_deadline_ends_requests_through_either_process(server2: Server) -> None:
    body = {"prompt": "slow", "max_tokens": 240, "ignore_eos": True, "timeout": 0.2}
    for conn in connection_per_process(server2).values():
        status, _, answer = request(conn, "POST", "/v1/completions", body)
        assert status == 200
        assert json.loads(answer)["choices"][0]["finish_reason"] == "timeout"
        conn.close()


def test_killed_worker_fails_every_process_requests_then_recovers(server2: Server) -> None:
    conns = connection_per_process(server2)
    probe = http.client.HTTPConnection("127.0.0.1", server2.port, timeout=60)
    before = scrape(probe)
    stats = json.loads(request(probe, "GET", "/v1/engine/stats")[2])
    streams = [start_stream(conn, LONG) for conn in conns.values()]
    os.kill(stats["worker_pid"], signal.SIGKILL)
    for r in streams:
        rest = rest_of_stream(r)
        assert any(isinstance(e, dict) and "error" in e for e in rest), rest[-3:]
        assert rest[-1] == "[DONE]"
    for conn in conns.values():
        conn.close()

    def lost() -> bool:
        s = scrape(probe)
        reason = "worker_lost"
        return (
            s.value("gpt2_request_failure_total", reason=reason)
            - before.value("gpt2_request_failure_total", reason=reason)
            == 2
        )

    _wait(lost, what="both requests counted as worker_lost")
    probe.close()
    # Every process is ready again with the new worker, and serves.
    conns = connection_per_process(server2)
    for conn in conns.values():
        _wait(lambda conn=conn: request(conn, "GET", "/ready")[0] == 200, timeout=90)
        now = json.loads(request(conn, "GET", "/v1/engine/stats")[2])
        assert now["worker_pid"] != stats["worker_pid"] and now["worker_restarts"] == 1
        again = {"prompt": "again", "max_tokens": 3}
        status, _, body = request(conn, "POST", "/v1/completions", again)
        assert status == 200, body
        conn.close()


@pytest.fixture(scope="module")
def small(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Room for 1 running + 1 queued request in all: a share of 1 for each of the 2 processes."""
    log = tmp_path_factory.mktemp("logs") / "small.log"
    s = Server(
        tiny_model_dir,
        log,
        api_workers=2,
        max_num_seqs=1,
        max_queued_requests=1,
        drain_timeout_seconds=5,
    )
    yield s
    assert s.stop() == 0, s.log_path.read_text()[-3000:]


def test_each_process_refuses_past_its_share_with_429(small: Server) -> None:
    busy = connection_per_process(small)
    probes = connection_per_process(small)
    monitor = http.client.HTTPConnection("127.0.0.1", small.port, timeout=60)
    headers = {"Content-Type": "application/json"}
    for conn in busy.values():  # one request per share: one runs, the other waits its turn
        conn.request("POST", "/v1/completions", body=json.dumps(LONG), headers=headers)
    _wait(
        lambda: scrape(monitor).value("gpt2_num_requests_in_flight") == 2,
        what="both processes hold their request",
    )
    for conn in probes.values():
        status, headers, body = request(conn, "POST", "/v1/completions", {"prompt": "y"})
        assert status == 429, body
        assert int(headers["retry-after"]) >= 1
        assert b"max_queued_requests" in body and b"share over 2" in body
        conn.close()
    for conn in busy.values():
        conn.close()
    _wait(
        lambda: scrape(monitor).value("gpt2_num_requests_in_flight") == 0,
        what="the long requests aborted",
    )
    monitor.close()


def test_sigterm_drains_every_process_then_the_worker_stops(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    server = Server(tiny_model_dir, tmp_path / "log", api_workers=2, drain_timeout_seconds=60)
    try:
        conns = connection_per_process(server)
        worker = json.loads(request(next(iter(conns.values())), "GET", "/v1/engine/stats")[2])
        pids = {*conns, worker["worker_pid"]}
        probes = connection_per_process(server)  # idle connections stay open while draining
        body = {**LONG, "max_tokens": 300}
        streams = [start_stream(conn, body) for conn in conns.values()]
        server.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        for probe in probes.values():  # each process turns not ready and refuses new work
            _wait(lambda probe=probe: request(probe, "GET", "/ready")[0] == 503, timeout=10)
            status, _, _ = request(probe, "POST", "/v1/completions", {"prompt": "late"})
            assert status == 503
            probe.close()
        for r in streams:  # while the streams in flight run to their end
            rest = rest_of_stream(r)
            assert rest[-1] == "[DONE]" and rest[-2]["choices"][0]["finish_reason"] == "length"
        assert server.proc.wait(30) == 0, server.log_path.read_text()[-3000:]
        assert time.monotonic() - started < 60 + 10
        for pid in pids:  # the supervisor reaped every process it started
            assert not Path(f"/proc/{pid}").exists(), pid
    finally:
        server.stop()


def test_sigterm_with_more_work_than_the_drain_allows_exits_in_time(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """One request runs and three wait behind it (max_num_seqs 1): far more than a 1 s drain
    lets finish. Every process still exits, and the server with it, in the drain and a few
    seconds."""
    drain = 1.0
    server = Server(
        tiny_model_dir,
        tmp_path / "log",
        api_workers=2,
        max_num_seqs=1,
        max_queued_requests=8,
        drain_timeout_seconds=drain,
    )
    try:
        monitor = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        busy = [conn for _ in range(2) for conn in connection_per_process(server).values()]
        body = json.dumps({**LONG, "max_tokens": 1000})
        for conn in busy:
            conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        _wait(
            lambda: scrape(monitor).value("gpt2_num_requests_in_flight") == len(busy),
            what="every request admitted",
        )
        monitor.close()
        server.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert server.proc.wait(drain + 15) == 0, server.log_path.read_text()[-3000:]
        assert time.monotonic() - started < drain + 8
    finally:
        server.stop()
