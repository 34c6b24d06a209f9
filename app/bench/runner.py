"""Drive a target at each sweep point: warm-up first, then the measured requests.

Two modes. Fixed concurrency (closed loop): N workers, each sends its next request as soon as
its last one ended. Arrival rate (open loop): requests start at Poisson arrival times (seeded
exponential gaps of mean 1/rate), however many are still running. Both stop starting requests
after --num-requests or once --duration has passed, then wait for those in flight. Every
request ends within its own timeout (client.stream_completion), so a point ends by itself even
when the server hangs: at most duration (or the requests' start schedule) plus one timeout.

Warm-up requests (their own seeded stream) run before the first point of each target and count
nowhere. Each point scrapes gpt2-serve's /metrics before and after its measured phase when the
target serves it (metrics_check).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from time import process_time  # CPU, whatever clock the tests put in `time`
from typing import Any, Literal

import httpx
from tqdm import tqdm

from app.bench.client import (
    RequestResult,
    completion_payload,
    served_model,
    stream_completion,
)
from app.bench.metrics_check import CrossCheck, Tolerance, cross_check, scrape, scrape_settled
from app.bench.stats import PointStats, compute
from app.bench.workload import RequestSpec, Workload

WARMUP_STREAM = 1  # the warm-up's seeded request stream; the measured one is 0


@dataclass(frozen=True)
class Target:
    label: str
    url: str  # base URL, e.g. http://127.0.0.1:8000
    model: str | None = None  # None: the first of GET /v1/models, else no "model" field
    api_key: str | None = None


@dataclass(frozen=True)
class LoadPoint:
    mode: Literal["concurrency", "rate"]
    value: float  # workers, or requests per second

    @property
    def name(self) -> str:
        if self.mode == "concurrency":
            return f"concurrency={int(self.value)}"
        return f"rate={self.value:g}/s"


@dataclass(frozen=True)
class RunSettings:
    num_requests: int | None = 64  # stop after this many measured requests ...
    duration: float | None = None  # ... or after this many seconds (exactly one is set)
    warmup: int = 2
    timeout: float = 120.0  # per request, connect to last byte
    ignore_eos: bool = False
    temperature: float = 0.0
    seed: int = 0
    metrics_check: bool = True
    tolerance: Tolerance = field(default_factory=Tolerance)
    progress: bool = True
    # Closed-loop points spread their streams over this many client processes: one Python
    # process tops out at a few thousand streamed tokens a second, and a figure must never be
    # the client's own ceiling. Each process's CPU is reported with the point.
    processes: int = 1

    def __post_init__(self) -> None:
        if (self.num_requests is None) == (self.duration is None):
            raise ValueError("set exactly one of num_requests and duration")


@dataclass
class PointResult:
    point: LoadPoint
    results: list[RequestResult]
    stats: PointStats
    check: CrossCheck | None
    # CPU seconds and wall seconds of each client process that sent the point's requests.
    client_cpu_seconds: list[float] = field(default_factory=list)
    client_wall_seconds: float = 0.0


@dataclass
class TargetResult:
    target: Target
    model: str | None
    warmup_errors: int
    points: list[PointResult]
    warmup_failure: RequestResult | None = None  # the first warm-up request that failed

    def first_failure(self) -> tuple[str, RequestResult] | None:
        """The first request that failed, and where: the warm-up's, else a point's."""
        if self.warmup_failure is not None:
            return "the warm-up's", self.warmup_failure
        for p in self.points:
            for r in p.results:
                if not r.ok:
                    return p.point.name, r
        return None


class Budget:
    """Whether another request may start: under the count and before the deadline."""

    def __init__(self, count: int | None, duration: float | None) -> None:
        self.left = count
        self.deadline = None if duration is None else time.perf_counter() + duration

    def expired(self) -> bool:
        return self.deadline is not None and time.perf_counter() >= self.deadline

    def take(self) -> bool:
        if self.expired():
            return False
        if self.left is not None:
            if self.left <= 0:
                return False
            self.left -= 1
        return True


def poisson_gaps(rate: float, rng: random.Random) -> Iterator[float]:
    """Exponential inter-arrival gaps of mean 1/rate: a Poisson process of `rate` per second."""
    if rate <= 0:
        raise ValueError(f"request rate must be positive, got {rate}")
    while True:
        yield rng.expovariate(rate)


Send = Callable[[RequestSpec], Coroutine[Any, Any, RequestResult]]


async def closed_loop(
    send: Send, specs: Iterator[RequestSpec], concurrency: int, budget: Budget
) -> list[RequestResult]:
    results: list[RequestResult] = []

    async def worker() -> None:
        while budget.take():
            results.append(await send(next(specs)))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def open_loop(
    send: Send, specs: Iterator[RequestSpec], gaps: Iterator[float], budget: Budget
) -> list[RequestResult]:
    tasks: list[asyncio.Task[RequestResult]] = []
    next_start = time.perf_counter()
    while budget.take():
        start = next_start if budget.deadline is None else min(next_start, budget.deadline)
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        if budget.expired():
            break
        tasks.append(asyncio.create_task(send(next(specs))))
        next_start += next(gaps)
    return list(await asyncio.gather(*tasks))


def make_client(
    target: Target, settings: RunSettings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """No connection cap (a pool limit would queue requests inside the client and count the
    wait as server latency); no proxies from the environment."""
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    return httpx.AsyncClient(
        headers=headers,
        timeout=httpx.Timeout(settings.timeout),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        trust_env=False,
        transport=transport,
    )


async def run_target(
    target: Target,
    points: list[LoadPoint],
    workload: Workload,
    settings: RunSettings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> TargetResult:
    base = target.url.rstrip("/")
    async with make_client(target, settings, transport=transport) as client:
        model = target.model or await served_model(client, base)
        send = make_send(client, base, model, settings)

        start = await scrape(client, base) if settings.metrics_check else None
        warm = await closed_loop(
            send,
            workload.specs(WARMUP_STREAM),
            max(1, min(settings.warmup, int(points[0].value) if points else 1)),
            Budget(settings.warmup, None),
        )
        if start is not None:  # the warm-up must be counted before the first point's scrape
            await scrape_settled(client, base, start, sum(r.ok for r in warm))
        failed = [r for r in warm if not r.ok]
        outcome = TargetResult(target, model, len(failed), [], failed[0] if failed else None)
        for point in points:
            outcome.points.append(
                await _run_point(client, base, send, point, workload, settings, target, model)
            )
        return outcome


def make_send(
    client: httpx.AsyncClient, base: str, model: str | None, settings: RunSettings
) -> Send:
    async def send(spec: RequestSpec) -> RequestResult:
        payload = completion_payload(
            spec, model, ignore_eos=settings.ignore_eos, temperature=settings.temperature
        )
        result = await stream_completion(
            client, base + "/v1/completions", payload, timeout=settings.timeout
        )
        result.requested_prompt_len = spec.prompt_len
        return result

    return send


async def _run_point(
    client: httpx.AsyncClient,
    base: str,
    send: Send,
    point: LoadPoint,
    workload: Workload,
    settings: RunSettings,
    target: Target,
    model: str | None,
) -> PointResult:
    before = await scrape(client, base) if settings.metrics_check else None
    bar = tqdm(
        total=settings.num_requests,
        desc=point.name,
        unit="req",
        disable=not settings.progress,
        leave=False,
    )

    async def counted(spec: RequestSpec) -> RequestResult:
        result = await send(spec)
        bar.update()
        return result

    cpu, wall = process_time(), time.perf_counter()
    if point.mode == "concurrency" and settings.processes > 1:
        bar.close()
        results, client_cpu = await _in_processes(target, model, point, workload, settings)
    else:
        specs = workload.specs()
        budget = Budget(settings.num_requests, settings.duration)
        try:
            if point.mode == "concurrency":
                results = await closed_loop(counted, specs, int(point.value), budget)
            else:
                rng = random.Random(f"{settings.seed}/arrivals/{point.value}")
                results = await open_loop(counted, specs, poisson_gaps(point.value, rng), budget)
        finally:
            bar.close()
        client_cpu = [process_time() - cpu]
    wall = time.perf_counter() - wall
    check = None
    if before is not None:
        completed = sum(r.ok for r in results)
        after = await scrape_settled(client, base, before, completed)
        if after is not None:
            check = cross_check(before, after, results, settings.tolerance)
    return PointResult(point, results, compute(results), check, client_cpu, wall)


async def _in_processes(
    target: Target, model: str | None, point: LoadPoint, workload: Workload, settings: RunSettings
) -> tuple[list[RequestResult], list[float]]:
    """A closed-loop point's streams (and requests) split over settings.processes client
    processes, each on its own part of the seeded request stream; their results merged."""
    n = settings.processes
    streams = _split(int(point.value), n)
    counts = _split(settings.num_requests, n) if settings.num_requests is not None else [None] * n
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn")) as pool:
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(
                    pool, _process_share, target, model, share, count, i, workload, settings
                )
                for i, (share, count) in enumerate(zip(streams, counts, strict=True))
                if share > 0
            )
        )
    return [r for results, _ in parts for r in results], [cpu for _, cpu in parts]


def _split(total: int, n: int) -> list[int]:
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def _process_share(
    target: Target,
    model: str | None,
    concurrency: int,
    num_requests: int | None,
    index: int,
    workload: Workload,
    settings: RunSettings,
) -> tuple[list[RequestResult], float]:
    """One client process's part of a point (run in a spawned process)."""

    async def run() -> list[RequestResult]:
        async with make_client(target, settings) as client:
            send = make_send(client, target.url.rstrip("/"), model, settings)
            budget = Budget(num_requests, settings.duration)
            return await closed_loop(send, workload.specs(1000 + index), concurrency, budget)

    cpu = process_time()
    results = asyncio.run(run())
    return results, process_time() - cpu
