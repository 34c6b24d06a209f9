"""Mixed load: does a long prompt arriving while many streams decode hurt anyone?

1. Idle: `probes` long-prompt requests, one after another, on an otherwise idle server; their
   median time to first token is the idle TTFT.
2. Busy: `streams` background requests start and decode (short prompts, long outputs). Once
   every one of them has streamed a token, the same long-prompt probes are sent again, one after
   another; each probe's TTFT is measured against the idle one.
3. The background streams' inter-token gaps are split into those that ended while a probe was
   waiting for its first token (its prefill was running) and the rest (steady decoding). The
   report gives the p99 of the first against the p50 of the second.
4. The background streams are then cancelled (their connections close; the server aborts them).

Every wait is bounded by `timeout`.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
from dataclasses import asdict, dataclass

import httpx

from app.bench.client import RequestResult, completion_payload, stream_completion, stream_into
from app.bench.stats import percentile
from app.bench.workload import RequestSpec, text_prompt


@dataclass(frozen=True)
class MixedSettings:
    streams: int = 32
    stream_prompt_len: int = 32
    # Must fit the server's context with the prompt; the streams are cancelled long before.
    stream_output_len: int = 900
    probe_prompt_len: int = 512
    probe_output_len: int = 8
    probes: int = 3
    timeout: float = 300.0
    seed: int = 0


@dataclass(frozen=True)
class MixedResult:
    idle_ttft: list[float]  # seconds, one per probe
    busy_ttft: list[float]
    steady_itl_p50: float  # background gaps outside the probe windows
    window_itl_p50: float  # background gaps that ended while a probe was prefilling
    window_itl_p99: float
    window_gaps: int
    background_errors: int

    @property
    def ttft_ratio(self) -> float:
        """Busy over idle median time to first token (the promise: at most 2)."""
        return statistics.median(self.busy_ttft) / statistics.median(self.idle_ttft)

    @property
    def itl_ratio(self) -> float:
        """p99 gap during probe prefill over the steady p50 gap (the promise: at most 3)."""
        return self.window_itl_p99 / self.steady_itl_p50

    def to_json(self) -> dict[str, object]:
        return {
            **asdict(self),
            "ttft_ratio": self.ttft_ratio,
            "itl_ratio": self.itl_ratio,
        }

    def lines(self) -> list[str]:
        return [
            f"long prompt TTFT: idle median {statistics.median(self.idle_ttft) * 1e3:.0f} ms, "
            f"with {len(self.busy_ttft)} probes amid decoding streams median "
            f"{statistics.median(self.busy_ttft) * 1e3:.0f} ms -> {self.ttft_ratio:.2f}x",
            f"running streams' inter-token gap: steady p50 {self.steady_itl_p50 * 1e3:.0f} ms, "
            f"during the probes' prefill p50 {self.window_itl_p50 * 1e3:.0f} ms, "
            f"p99 {self.window_itl_p99 * 1e3:.0f} ms ({self.window_gaps} gaps) "
            f"-> p99/p50 {self.itl_ratio:.2f}x",
        ]


async def run_mixed(
    client: httpx.AsyncClient, base_url: str, model: str | None, settings: MixedSettings
) -> MixedResult:
    url = base_url.rstrip("/") + "/v1/completions"
    rng = random.Random(settings.seed)

    def payload(prompt_len: int, output_len: int) -> dict[str, object]:
        spec = RequestSpec(text_prompt(prompt_len, rng), prompt_len, output_len)
        return completion_payload(spec, model, ignore_eos=True, temperature=0.0)

    async def probe() -> RequestResult:
        result = await stream_completion(
            client,
            url,
            payload(settings.probe_prompt_len, settings.probe_output_len),
            timeout=settings.timeout,
        )
        if not result.ok or result.first_token_time is None:
            raise RuntimeError(f"probe failed: {result.error} {result.detail}")
        return result

    idle = [await probe() for _ in range(settings.probes)]

    # Background streams: long enough to outlast the probes; cancelled when they are done.
    background = [RequestResult(send_time=time.perf_counter()) for _ in range(settings.streams)]
    tasks = [
        asyncio.create_task(
            stream_into(
                client,
                url,
                payload(settings.stream_prompt_len, settings.stream_output_len),
                result,
            )
        )
        for result in background
    ]
    try:
        deadline = time.perf_counter() + settings.timeout
        while not all(r.token_times for r in background):
            if time.perf_counter() > deadline or any(t.done() for t in tasks):
                raise RuntimeError("background streams did not all start decoding")
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # let the batch settle into plain decode steps
        busy = [await probe() for _ in range(settings.probes)]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    windows = [(r.send_time, r.first_token_time or r.send_time) for r in busy]
    start = min(w[0] for w in windows)
    steady, during = [], []
    for result in background:
        times = result.token_times
        for before, after in itertools.pairwise(times):
            if any(lo < after <= hi for lo, hi in windows):
                during.append(after - before)
            elif before >= start - 5.0:  # steady decoding near the probes, not the ramp-up
                steady.append(after - before)
    return MixedResult(
        idle_ttft=[r.first_token_time - r.send_time for r in idle if r.first_token_time],
        busy_ttft=[r.first_token_time - r.send_time for r in busy if r.first_token_time],
        steady_itl_p50=percentile(steady, 0.5),
        window_itl_p50=percentile(during, 0.5),
        window_itl_p99=percentile(during, 0.99),
        window_gaps=len(during),
        background_errors=sum(1 for r in background if r.error),
    )
