"""Soak and chaos run (issue 16): nothing is lost under faults. `make soak`, or

    python scripts/soak.py --seconds 600        # SOAK_SECONDS for make; --help for the rest

Starts the service (the bundled demo model, CPU, on 127.0.0.1: no other traffic anywhere) with
a small capacity, and drives it at twice that capacity for the set time with a mix of streamed
and non-streamed OpenAI and TGI requests, random client disconnects (queued and running),
random deadlines and oversized inputs, kills the engine worker every few minutes, and ends
with a SIGTERM under load. The time is cut into phases; after each, the load pauses and the
run checks the server against what the clients saw. It prints a summary and exits 1 if any
check failed:

- every request was answered exactly one way: complete (a finish reason), 429 with
  Retry-After, a 4xx envelope, a 503 envelope, an error event (+ [DONE] on OpenAI streams),
  or the client left; anything else (a 500, a stream cut without an error event, a reset
  connection, a 429 without Retry-After) is a violation;
- the server's request counters (gpt2_request_success / _failure) equal the clients' tallies
  outcome by outcome; a request the client left may be counted as "disconnected", as what
  it reached first, or not at all (it left before the server saw it), so per outcome
  0 <= server - clients and the sum of those differences <= the requests the clients left;
- after each phase: nothing in flight, running or waiting, no KV slot or queued prompt token
  in use (/v1/engine/stats and the /metrics gauges);
- RSS of the HTTP process and of the worker flat: under 5% growth from the first phase's end
  to the last (the worker per process: a killed one starts over), and no fd growth (with
  --api-workers, "HTTP" is the supervisor and its API processes together);
- /health under 100 ms, always (a separate process probes it every 100 ms);
- after the SIGTERM, the process exits within the drain deadline plus its bounded shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.cli import SHUTDOWN_MARGIN_SECONDS  # noqa: E402
from app.engine.client.worker_handle import STOP_SECONDS  # noqa: E402

PROMPTS = [
    "It is a truth universally acknowledged",
    "And God said unto Moses,",
    "HAMLET. To be, or not to be",
    "She was not very happy, for",
    "The king",
    "Thou",
]
BIG_TEXT = "word " * 180_000  # 900 KB: refused before it is tokenized
HEALTH_LIMIT_S = 0.100
RSS_GROWTH_LIMIT = 0.05


# ---- one request ---------------------------------------------------------------------------


@dataclass
class Result:
    kind: str  # complete | overloaded | rejected | unavailable | stream_error | gone | refused
    outcome: str | None  # the server outcome it must be counted as (None: gone / refused)
    violation: str | None = None  # what was wrong; for "gone": before an answer or mid-stream


def _violation(what: str) -> Result:
    return Result("violation", None, what)


def _error_outcome(message: str) -> str:
    if "worker died" in message:
        return "worker_lost"
    if "shutting down" in message:
        return "shutdown"
    return "unavailable"


def _envelope(r: httpx.Response) -> Result:
    """A non-200 answer: it must be our JSON envelope (and a 429 must say when to retry)."""
    try:
        error = r.json()["error"]
        message = str(error["message"])
    except (ValueError, KeyError, TypeError):
        return _violation(f"{r.status_code} without an error envelope: {r.text[:120]!r}")
    if r.status_code == 429:
        retry = r.headers.get("retry-after", "")
        if not retry.isdigit() or int(retry) < 1:
            return _violation(f"429 without a valid Retry-After ({retry!r})")
        return Result("overloaded", "overloaded")
    if r.status_code == 503:
        return Result("unavailable", _error_outcome(message))
    if 400 <= r.status_code < 500:
        return Result("rejected", "validation")
    return _violation(f"{r.status_code}: {message[:120]}")


def _finish(reason: str | None) -> str | None:
    return {"eos_token": "stop", "stop_sequence": "stop"}.get(reason or "", reason)


async def _openai_stream(r: httpx.Response) -> Result:
    events: list[Any] = []
    async for line in r.aiter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    if not events or events[-1] != "[DONE]":
        return _violation("an OpenAI stream ended without [DONE]")
    errors = [i for i, e in enumerate(events) if isinstance(e, dict) and "error" in e]
    if errors:
        if errors != [len(events) - 2]:
            return _violation("an error event not followed by [DONE]")
        return Result("stream_error", _error_outcome(events[-2]["error"]["message"]))
    reasons = [
        c["finish_reason"] for e in events[:-1] for c in e.get("choices", []) if c["finish_reason"]
    ]
    if len(reasons) != 1:
        return _violation(f"a stream with {len(reasons)} finish reasons")
    return Result("complete", reasons[0])


async def _tgi_stream(r: httpx.Response) -> Result:
    events = [
        json.loads(line[len("data:") :])
        async for line in r.aiter_lines()
        if line.startswith("data:")
    ]
    if not events:
        return _violation("an empty TGI stream")
    last = events[-1]
    if "error" in last:
        return Result("stream_error", _error_outcome(last["error"]["message"]))
    if last.get("generated_text") is None or last.get("details") is None:
        return _violation("a TGI stream ended without its final event")
    return Result("complete", _finish(last["details"]["finish_reason"]))


async def send(
    client: httpx.AsyncClient, spec: dict[str, Any], seen: dict[str, bool] | None = None
) -> Result:
    """One request; `seen["answer"]` turns true once its status line arrived."""
    seen = {} if seen is None else seen
    path, body, stream = spec["path"], spec["body"], spec["stream"]
    if not stream:
        r = await client.post(path, **body)
        if r.status_code != 200:
            return _envelope(r)
        data = r.json()
        if path == "/generate":
            return Result("complete", _finish(data["details"]["finish_reason"]))
        return Result("complete", data["choices"][0]["finish_reason"])
    async with client.stream("POST", path, **body) as r:
        seen["answer"] = True
        if r.status_code != 200:
            await r.aread()
            return _envelope(r)
        return await (_tgi_stream(r) if path == "/generate_stream" else _openai_stream(r))


def make_spec(rng: random.Random, capacity: int, long: bool = False) -> dict[str, Any]:
    """One random request. `long`: long generations (the final drain)."""
    prompt = rng.choice(PROMPTS)
    max_tokens = rng.randint(150, 220) if long else rng.randint(1, 48)
    common: dict[str, Any] = {"max_tokens": max_tokens, "temperature": rng.choice([0, 0.8])}
    if long:
        common["ignore_eos"] = True
    if rng.random() < 0.15 and not long:
        common["timeout"] = round(rng.uniform(0.02, 1.0), 3)  # a deadline: finish "timeout"
    roll = rng.random()
    if roll < 0.04:  # oversized: 900 KB of text, more choices than the server holds, > 1 MB
        which = rng.choice(["text", "choices", "body"])
        if which == "text":
            return {
                "path": "/v1/completions",
                "body": {"json": {"prompt": BIG_TEXT}},
                "stream": False,
            }
        if which == "choices":
            body = {"prompt": [prompt] * (capacity + 1)}
            return {"path": "/v1/completions", "body": {"json": body}, "stream": False}
        big = b'{"prompt": "' + b"x" * (1024 * 1024 + 10) + b'"}'
        headers = {"content-type": "application/json"}
        return {
            "path": "/v1/completions",
            "body": {"content": big, "headers": headers},
            "stream": False,
        }
    if roll < 0.06:  # bad input
        return {
            "path": "/v1/completions",
            "body": {"json": {"prompt": prompt, "temperature": 5}},
            "stream": False,
        }
    stream = rng.random() < 0.5
    route = rng.choice(["completions", "chat", "tgi"])
    if route == "completions":
        body = {"prompt": prompt, "stream": stream, **common}
        return {"path": "/v1/completions", "body": {"json": body}, "stream": stream}
    if route == "chat":
        body = {"messages": [{"role": "user", "content": prompt}], "stream": stream, **common}
        return {"path": "/v1/chat/completions", "body": {"json": body}, "stream": stream}
    params = {"max_new_tokens": max_tokens, "details": True}
    if common["temperature"]:
        params.update(do_sample=True, temperature=common["temperature"])
    path = "/generate_stream" if stream else "/generate"
    return {
        "path": path,
        "body": {"json": {"inputs": prompt, "parameters": params}},
        "stream": stream,
    }


# ---- the load --------------------------------------------------------------------------------


@dataclass
class Tally:
    kinds: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)  # what the server must have counted
    gone: int = 0
    gone_when: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    def add(self, result: Result) -> None:
        self.kinds[result.kind] += 1
        if result.kind == "violation":
            self.violations.append(result.violation or "?")
        elif result.kind == "gone":
            self.gone += 1
            self.gone_when[result.violation or "?"] += 1
        elif result.outcome is not None:
            self.outcomes[result.outcome] += 1


class Load:
    """`clients` coroutines, each sending one request after another until stopped."""

    def __init__(self, url: str, clients: int, capacity: int, seed: int) -> None:
        self.url, self.clients, self.capacity = url, clients, capacity
        self.rng = random.Random(seed)
        self.tally = Tally()
        self.shutting_down = False  # after the final SIGTERM, refused connections are expected

    async def run(self, stop: asyncio.Event, long: bool = False) -> None:
        # Idle connections are dropped by the client before the server's keep-alive timeout (5 s)
        # can close them under a request being sent (a lost request nobody answered).
        limits = httpx.Limits(max_connections=self.clients + 4, keepalive_expiry=2.0)
        async with httpx.AsyncClient(base_url=self.url, timeout=120, limits=limits) as client:
            await asyncio.gather(*(self._client(client, stop, long) for _ in range(self.clients)))

    async def _client(self, client: httpx.AsyncClient, stop: asyncio.Event, long: bool) -> None:
        while not stop.is_set():
            spec = make_spec(self.rng, self.capacity, long)
            leave_after = self.rng.uniform(0.0, 1.5) if self.rng.random() < 0.15 else None
            result = await self._one(client, spec, leave_after)
            self.tally.add(result)
            if result.kind in ("overloaded", "unavailable", "refused"):
                await asyncio.sleep(self.rng.uniform(0.05, 0.3))
            if result.kind == "refused":
                return

    async def _one(
        self, client: httpx.AsyncClient, spec: dict[str, Any], leave_after: float | None
    ) -> Result:
        seen: dict[str, bool] = {}
        task = asyncio.ensure_future(send(client, spec, seen))
        try:
            return await asyncio.wait_for(task, leave_after)
        except TimeoutError:
            # The client left: before any answer (queued, or running a non-streamed request) or
            # in the middle of a stream.
            return Result("gone", None, "mid-stream" if seen.get("answer") else "before")
        except httpx.TransportError as exc:
            # Once the drain is over uvicorn closes its socket and the idle keep-alive
            # connections: a request sent then is refused unread. (One it had read and then cut
            # would show in its log as a cancelled task: see check_log.)
            if self.shutting_down:
                return Result("refused", None)
            return _violation(f"{spec['path']}: {type(exc).__name__}: {exc}")
        except httpx.HTTPError as exc:
            return _violation(f"{spec['path']}: {type(exc).__name__}: {exc}")


# ---- the server and its state ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def http_pids(server: int, worker: int) -> list[int]:
    """The server's process and, with --api-workers, its API processes: its children but the
    engine worker and multiprocessing's resource tracker."""
    children = Path(f"/proc/{server}/task/{server}/children").read_text().split()
    return [server] + [
        pid
        for pid in map(int, children)
        if pid != worker and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = sample.labels.get("finished_reason") or sample.labels.get("reason")
            values[sample.name + (f":{label}" if label else "")] = sample.value
    return values


def server_outcomes(metrics: dict[str, float]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for name, value in metrics.items():
        for prefix in ("gpt2_request_success_total:", "gpt2_request_failure_total:"):
            if name.startswith(prefix) and value:
                counts[name[len(prefix) :]] += int(value)
    return counts


def probe_health(url: str, out_path: str, stop: Any) -> None:
    """In its own process: GET /health every 100 ms, one line per probe (time, seconds|error)."""
    with httpx.Client(timeout=5) as client, open(out_path, "w") as out:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                client.get(url + "/health").raise_for_status()
                out.write(f"{time.time():.3f} {time.perf_counter() - start:.6f}\n")
            except httpx.HTTPError as exc:
                out.write(f"{time.time():.3f} error {type(exc).__name__}\n")
            out.flush()
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - start)))


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.capacity = args.max_num_seqs + args.max_queued_requests
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.checks: list[Check] = []
        self.phase_rows: list[str] = []
        self.kill_times: list[float] = []
        self.started_at = self.signalled_at = time.time()
        self.work = Path(tempfile.mkdtemp(prefix="gpt2-soak-"))

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))
        if not ok:
            print(f"  FAILED {name}: {detail}", flush=True)

    # -- server ----------------------------------------------------------------------------

    def start_server(self) -> None:
        args = self.args
        command = [
            sys.executable, "-m", "app.cli", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu",
            "--max-num-seqs", str(args.max_num_seqs),
            "--max-queued-requests", str(args.max_queued_requests),
            "--drain-timeout-seconds", str(args.drain_seconds),
            "--keep-alive-seconds", "1",
            "--log-level", "WARNING",
            *args.serve_arg,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.log_path = self.work / "server.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - as long as the server runs
        self.server = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise SystemExit(f"the server exited:\n{self.log_path.read_text()[-3000:]}")
            if self.ready():
                return
            time.sleep(0.2)
        raise SystemExit("the server was not ready in 180 s")

    def ready(self) -> bool:
        try:
            return httpx.get(self.url + "/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/v1/engine/stats", timeout=10).json())

    # -- phases ----------------------------------------------------------------------------

    async def run_phase(self, load: Load, seconds: float, kill_at: list[float]) -> None:
        http = http_pids(self.server.pid, int(self.stats()["worker_pid"]))
        self.phase_cpu = (sum(map(cpu_seconds, http)), time.monotonic())
        stop = asyncio.Event()
        runner = asyncio.create_task(load.run(stop))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if kill_at and time.monotonic() >= kill_at[0]:
                kill_at.pop(0)
                pid = int(self.stats()["worker_pid"])
                os.kill(pid, signal.SIGKILL)
                self.kill_times.append(time.time() - self.started_at)
                print(f"  killed the worker (pid {pid})", flush=True)
            await asyncio.sleep(0.1)
        stop.set()
        await runner  # every client finishes the request it has in hand

    async def settle(self) -> dict[str, Any]:
        """Wait until the worker is back and nothing is in flight; return the engine's stats."""
        deadline = time.monotonic() + 90
        while True:
            stats = await asyncio.to_thread(self.stats)
            if stats["ready"] and stats["worker_alive"] and stats["requests_in_flight"] == 0:
                await asyncio.sleep(0.5)  # the last requests' accounting, and a quiet step
                return await asyncio.to_thread(self.stats)
            if time.monotonic() > deadline:
                return stats
            await asyncio.sleep(0.2)

    def after_phase(self, name: str, load: Load) -> Row:
        stats = self.stats()
        metrics = scrape(self.url)
        zero = {
            "requests_in_flight": stats["requests_in_flight"],
            "num_running": stats["num_running"],
            "num_waiting": stats["num_waiting"],
            "kv_blocks_used": stats["kv_blocks_used"],
            "queued_prompt_tokens": stats["queued_prompt_tokens"],
            "gpt2_num_requests_in_flight": metrics.get("gpt2_num_requests_in_flight", -1),
            "gpt2_num_requests_running": metrics.get("gpt2_num_requests_running", -1),
            "gpt2_num_requests_waiting": metrics.get("gpt2_num_requests_waiting", -1),
            "gpt2_kv_cache_usage_perc": metrics.get("gpt2_kv_cache_usage_perc", -1),
        }
        busy = {k: v for k, v in zero.items() if v != 0}
        self.check(f"{name}: gauges and KV back to zero", not busy, str(busy or "all 0"))
        self.check_counters(name, load.tally, server_outcomes(metrics))
        worker = int(stats["worker_pid"])
        http = http_pids(self.server.pid, worker)
        row = Row(
            sum(map(rss_mib, http)), sum(map(fds, http)), rss_mib(worker), fds(worker), worker
        )
        cpu = (sum(map(cpu_seconds, http)) - self.phase_cpu[0]) / (
            time.monotonic() - self.phase_cpu[1]
        )
        self.phase_rows.append(
            f"{name:>8}: {sum(load.tally.kinds.values()):6d} requests so far | HTTP "
            f"{row.http_rss:6.1f} MiB {row.http_fds:3d} fds, CPU {cpu:4.0%} | worker "
            f"{row.worker_rss:6.1f} MiB {row.worker_fds:3d} fds (pid {worker})"
        )
        print(self.phase_rows[-1], flush=True)
        return row

    def check_counters(self, name: str, tally: Tally, server: Counter[str]) -> None:
        outcomes = set(server) | set(tally.outcomes)
        over = {o: server[o] - tally.outcomes[o] for o in outcomes if o != "disconnected"}
        extra = sum(over.values()) + server["disconnected"]
        ok = all(v >= 0 for v in over.values()) and extra <= tally.gone
        exact = ", ".join(
            f"{o} {server[o]}/{tally.outcomes[o]}" for o in sorted(outcomes) if o != "disconnected"
        )
        detail = (
            f"server/clients: {exact}; disconnected {server['disconnected']}, "
            f"left by clients {tally.gone} (counted as something: {extra})"
        )
        self.check(f"{name}: counters equal what the clients saw", ok, detail)

    async def final_sigterm(self, load: Load) -> float:
        """Long requests at twice the capacity, SIGTERM once the server is full, keep sending
        until it is gone; return seconds from the signal to the exit."""
        stop = asyncio.Event()
        runner = asyncio.create_task(load.run(stop, long=True))
        deadline = time.monotonic() + 30
        while (await asyncio.to_thread(self.stats))["requests_in_flight"] < self.capacity:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        in_flight = (await asyncio.to_thread(self.stats))["requests_in_flight"]
        load.shutting_down = True
        signalled = time.monotonic()
        self.signalled_at = time.time()
        self.server.send_signal(signal.SIGTERM)
        while self.server.poll() is None and time.monotonic() - signalled < 60:
            await asyncio.sleep(0.02)
        took = time.monotonic() - signalled
        stop.set()
        await runner
        print(f"  SIGTERM with {in_flight} requests in flight: exit {self.server.poll()} "
              f"after {took:.2f} s", flush=True)  # fmt: skip
        return took

    async def main(self) -> int:
        args = self.args
        self.start_server()
        print(
            f"soak: {args.seconds:.0f} s at {2 * self.capacity} clients (twice the capacity of "
            f"{self.capacity}: max_num_seqs {args.max_num_seqs} + max_queued_requests "
            f"{args.max_queued_requests}), demo model on CPU, {self.url}; worker killed every "
            f"{args.kill_every:.0f} s; log {self.log_path}",
            flush=True,
        )
        ctx = mp.get_context("spawn")
        probe_stop = ctx.Event()
        probe_file = self.work / "health.txt"
        prober = ctx.Process(target=probe_health, args=(self.url, str(probe_file), probe_stop))
        prober.start()
        # The clients yield the CPU to the server and the prober: on a shared machine they would
        # otherwise take turns with the very process whose latency is measured.
        os.nice(10)
        load = Load(self.url, 2 * self.capacity, self.capacity, args.seed)
        self.started_at = time.time()
        start = time.monotonic()
        kills = [start + t for t in _every(args.kill_every, args.seconds)]
        rows: list[Row] = []
        for i, seconds in enumerate(_phases(args.seconds, args.phase_seconds)):
            await self.run_phase(load, seconds, kills)
            await self.settle()
            rows.append(self.after_phase("warm-up" if i == 0 else f"phase {i}", load))
        exited = await self.final_sigterm(load)
        probe_stop.set()
        prober.join(10)
        self.log.close()
        self.check_answers(load.tally)
        self.check_log()
        self.check_resources(rows)
        self.check_exit(exited)
        self.check_health(probe_file)
        self.print_summary(load.tally)
        return 0 if all(c.ok for c in self.checks) else 1

    def check_answers(self, tally: Tally) -> None:
        shown = f": {tally.violations[:5]}" if tally.violations else ""
        self.check(
            "every request answered exactly one way",
            not tally.violations,
            f"{len(tally.violations)} violations{shown}",
        )

    def check_log(self) -> None:
        """No request read and then cut (uvicorn cancelling handlers), no unhandled error."""
        bad = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            cut = "timeout graceful shutdown exceeded" in line
            if cut or "Exception in ASGI application" in line or "unhandled error" in line:
                bad.append(line[:200])
        self.check("server log: no request cut, no unhandled error", not bad, str(bad[:3] or "-"))

    def check_resources(self, rows: list[Row]) -> None:
        """After the warm-up: HTTP RSS and fds flat; each worker that served three phases or
        more flat from the end of its first whole phase (a killed one starts over)."""
        if len(rows) < 3:
            self.check("resources flat", False, "too short a run: no phase after the warm-up")
            return
        first, last = rows[1], rows[-1]
        growth = last.http_rss / first.http_rss - 1
        self.check(
            "HTTP process RSS flat",
            growth < RSS_GROWTH_LIMIT,
            f"{first.http_rss:.1f} -> {last.http_rss:.1f} MiB ({growth:+.1%})",
        )
        self.check(
            "HTTP process fds flat", last.http_fds <= first.http_fds, f"{first.http_fds} -> "
            f"{last.http_fds}; after each phase: {[r.http_fds for r in rows]}",
        )  # fmt: skip
        by_pid: dict[int, list[Row]] = {}
        for row in rows:
            by_pid.setdefault(row.worker_pid, []).append(row)
        lived = {pid: seen for pid, seen in by_pid.items() if len(seen) >= 3}
        if not lived:
            print("  (worker RSS: no worker lived three phases; not checked)")
        for pid, seen in lived.items():
            base, end = seen[1], seen[-1]
            growth = end.worker_rss / base.worker_rss - 1
            self.check(
                f"worker RSS flat (pid {pid})",
                growth < RSS_GROWTH_LIMIT and end.worker_fds <= base.worker_fds,
                f"{base.worker_rss:.1f} -> {end.worker_rss:.1f} MiB ({growth:+.1%}), fds "
                f"{base.worker_fds} -> {end.worker_fds}",
            )

    def check_exit(self, exited: float) -> None:
        bound = self.args.drain_seconds + SHUTDOWN_MARGIN_SECONDS + STOP_SECONDS + 3
        self.check(
            "exit after SIGTERM within the drain deadline",
            self.server.returncode == 0 and exited <= bound,
            f"exit {self.server.returncode} after {exited:.2f} s (drain {self.args.drain_seconds}"
            f" s; bound {bound:.0f} s)",
        )

    def check_health(self, probe_file: Path) -> None:
        latencies: list[tuple[float, float]] = []
        errors = 0
        drain_end = self.signalled_at + self.args.drain_seconds
        for line in probe_file.read_text().splitlines():
            at, value, *_ = line.split()
            if value != "error":
                latencies.append((float(value), float(at) - self.started_at))
            elif float(at) < drain_end:  # until the drain ends, the server answers everything
                errors += 1
        if not latencies:
            self.check("/health always under 100 ms", False, "no probe answered")
            return
        values = sorted(v for v, _ in latencies)
        slow = [f"{v * 1000:.0f} ms at {t:.0f} s" for v, t in latencies if v >= HEALTH_LIMIT_S]
        self.check(
            "/health always under 100 ms",
            not slow and errors == 0,
            f"{len(values)} probes: p50 {values[len(values) // 2] * 1000:.1f} ms, p99 "
            f"{values[int(0.99 * (len(values) - 1))] * 1000:.1f} ms, max {values[-1] * 1000:.1f}"
            f" ms; {len(slow)} over 100 ms {slow[:5]}; failed {errors}",
        )

    def print_summary(self, t: Tally) -> None:
        kinds = t.kinds
        print("\n== soak summary ==")
        print(
            f"requests {sum(kinds.values())}: complete {kinds['complete']} "
            f"({_reasons(t.outcomes)}), 429 {kinds['overloaded']}, other 4xx {kinds['rejected']},"
            f" 503 {kinds['unavailable']}, stream error events {kinds['stream_error']}, client "
            f"left {kinds['gone']} ({t.gone_when['before']} before an answer, "
            f"{t.gone_when['mid-stream']} mid-stream), refused after the drain "
            f"{kinds['refused']}, violations "
            f"{kinds['violation']}"
        )
        print(f"worker kills at {[round(k) for k in self.kill_times]} s")
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"this machine: {os.cpu_count()} cores, load average now {load}")
        for row in self.phase_rows:
            print(row)
        for c in self.checks:
            print(f"[{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}")
        print("RESULT:", "PASS" if all(c.ok for c in self.checks) else "FAIL")


@dataclass(frozen=True)
class Row:
    """Resources after one phase."""

    http_rss: float
    http_fds: int
    worker_rss: float
    worker_fds: int
    worker_pid: int


def _reasons(outcomes: Counter[str]) -> str:
    return ", ".join(f"{k} {outcomes[k]}" for k in ("stop", "length", "timeout"))


def _every(interval: float, total: float) -> list[float]:
    return [interval * k for k in range(1, int(total // interval) + 1) if interval * k < total]


def _phases(total: float, phase: float) -> list[float]:
    """A warm-up (a sixth of the run, 20-60 s), then phases of `phase` seconds."""
    warm = min(60.0, max(20.0, total / 6))
    rest = max(phase, total - warm)
    count = max(2, round(rest / phase))
    return [warm] + [rest / count] * count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("SOAK_SECONDS", 600)),
        help="load time, warm-up included (env SOAK_SECONDS; default 600)",
    )
    parser.add_argument("--phase-seconds", type=float, default=60.0, help="checks after each")
    parser.add_argument("--kill-every", type=float, default=200.0, help="worker kill interval")
    parser.add_argument("--drain-seconds", type=float, default=2.0, help="the server's drain")
    parser.add_argument("--max-num-seqs", type=int, default=8)
    parser.add_argument("--max-queued-requests", type=int, default=8)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="one more argument for `gpt2-serve serve` (repeat it), e.g. --serve-arg=--cpu-gemm"
        " --serve-arg=torch",
    )
    return asyncio.run(Soak(parser.parse_args(argv)).main())


if __name__ == "__main__":
    raise SystemExit(main())
