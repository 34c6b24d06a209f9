"""The metrics cross-check against real /metrics text from app.metrics."""

from __future__ import annotations

import asyncio
import itertools
import math

import httpx
import pytest
from prometheus_client import generate_latest

from app.bench.client import RequestResult
from app.bench.metrics_check import (
    HISTOGRAMS,
    Histogram,
    Snapshot,
    Tolerance,
    cross_check,
    parse,
    scrape,
)
from app.config import DEFAULT_LATENCY_BUCKETS
from app.engine.protocol import Outcome, RequestRecord, RequestTimings
from app.metrics import Metrics

# (TTFT, inter-token gaps, end-to-end) of three requests, as the server timed them.
SERVED = [
    (0.040, [0.010, 0.012, 0.011], 0.080),
    (0.060, [0.020, 0.009, 0.013], 0.110),
    (0.200, [0.030, 0.030, 0.030], 0.300),
]


def _metrics() -> Metrics:
    return Metrics(DEFAULT_LATENCY_BUCKETS, process_metrics=False)


def _serve(metrics: Metrics, served: list[tuple[float, list[float], float]]) -> None:
    for i, (ttft, gaps, total) in enumerate(served):
        timings = RequestTimings(
            queue=0.001,
            time_to_first_token=ttft,
            decode=sum(gaps),
            total=total,
            mean_inter_token=sum(gaps) / len(gaps),
            max_inter_token=max(gaps),
        )
        record = RequestRecord(f"r{i}", "length", 8, len(gaps) + 1, timings, 0.001, tuple(gaps))
        metrics.record_work(record)
        metrics.record_outcome(Outcome.LENGTH)


def _snapshot(metrics: Metrics) -> Snapshot:
    return parse(generate_latest(metrics.registry).decode())


def _client(delay: float, served: list[tuple[float, list[float], float]]) -> list[RequestResult]:
    """What a client `delay` seconds behind the server would have measured."""
    results = []
    for ttft, gaps, total in served:
        times = [ttft + delay, *(ttft + delay + t for t in itertools.accumulate(gaps))]
        results.append(
            RequestResult(
                send_time=0.0,
                first_token_time=times[0],
                token_times=times,
                end_time=total + delay,
                output_tokens=len(times),
                usage_reported=True,
            )
        )
    return results


def test_parse_reads_the_service_histograms() -> None:
    metrics = _metrics()
    before = _snapshot(metrics)
    assert set(before.histograms) == set(HISTOGRAMS.values())
    assert before.histograms[HISTOGRAMS["ttft"]].count == 0 and before.successes == 0
    _serve(metrics, SERVED)
    after = _snapshot(metrics)
    ttft = after.histograms[HISTOGRAMS["ttft"]].minus(before.histograms[HISTOGRAMS["ttft"]])
    assert ttft.count == 3 and ttft.sum == pytest.approx(0.3)
    assert ttft.mean == pytest.approx(0.1)
    assert ttft.buckets[-1] == (math.inf, 3)
    assert len(ttft.buckets) == len(DEFAULT_LATENCY_BUCKETS) + 1
    itl = after.histograms[HISTOGRAMS["itl"]]
    assert itl.count == 9 and itl.sum == pytest.approx(0.165)
    assert after.successes == 3


def test_bucket_quantile_interpolates_like_prometheus() -> None:
    h = Histogram(((0.1, 2.0), (0.2, 6.0), (0.4, 8.0), (math.inf, 10.0)), 10.0, 2.0)
    assert h.bucket(0.5) == (0.1, 0.2)
    assert h.quantile(0.5) == pytest.approx(0.1 + 0.1 * (5 - 2) / 4)
    assert h.quantile(0.1) == pytest.approx(0.05)  # first bucket from 0
    assert h.quantile(0.95) == 0.4  # in +Inf: the highest finite bound
    assert math.isnan(Histogram(((math.inf, 0.0),), 0.0, 0.0).quantile(0.5))


def test_client_a_little_behind_the_server_agrees() -> None:
    metrics = _metrics()
    before = _snapshot(metrics)
    _serve(metrics, SERVED)
    check = cross_check(before, _snapshot(metrics), _client(0.004, SERVED))
    assert check.agree is True, check.summary()
    ttft, itl, e2e = check.comparisons
    assert (ttft.metric, ttft.server_count, ttft.client_count) == ("ttft", 3, 3)
    assert (itl.server_count, itl.client_count) == (9, 9)
    assert itl.client_mean == pytest.approx(itl.server_mean)  # same decode spans
    assert e2e.client_mean == pytest.approx(e2e.server_mean + 0.004)
    assert ttft.server_p50_bucket == (0.05, 0.075)
    assert check.summary()["metrics"][0]["metric"] == "gpt2_time_to_first_token_seconds"


def test_client_faster_than_the_server_disagrees() -> None:
    metrics = _metrics()
    before = _snapshot(metrics)
    _serve(metrics, SERVED)
    check = cross_check(before, _snapshot(metrics), _client(-0.02, SERVED))
    assert check.agree is False
    ttft, itl, e2e = check.comparisons
    assert not ttft.checks["mean"] and not e2e.checks["mean"]
    assert itl.agree  # gaps are differences of delays: a constant shift leaves them alone


def test_client_far_slower_than_allowed_disagrees() -> None:
    metrics = _metrics()
    before = _snapshot(metrics)
    _serve(metrics, SERVED)
    after = _snapshot(metrics)
    assert cross_check(before, after, _client(0.3, SERVED)).agree is False
    loose = Tolerance(absolute=0.5)
    assert cross_check(before, after, _client(0.3, SERVED), loose).agree is True


def test_counts_must_match_and_failures_skip_the_check() -> None:
    metrics = _metrics()
    before = _snapshot(metrics)
    _serve(metrics, SERVED)
    after = _snapshot(metrics)
    extra = _client(0.004, [*SERVED, SERVED[0]])  # the server saw one request fewer
    check = cross_check(before, after, extra)
    assert check.agree is False
    assert [c.checks["count"] for c in check.comparisons] == [False, False, False]
    failed = [*_client(0.004, SERVED), RequestResult(send_time=0, end_time=1, error="http_429")]
    skipped = cross_check(before, after, failed)
    assert skipped.agree is None
    assert skipped.skipped == "1 request(s) failed; the server counted parts of them too"


def test_scrape_tells_gpt2_serve_from_other_servers() -> None:
    text = generate_latest(_metrics().registry).decode()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "ours":
            return httpx.Response(200, text=text)
        if request.url.host == "other":
            return httpx.Response(200, text="# TYPE llamacpp_tokens counter\nllamacpp_tokens 3\n")
        return httpx.Response(404)

    async def go() -> list[Snapshot | None]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return [await scrape(client, f"http://{h}") for h in ("ours", "other", "none")]

    ours, other, none = asyncio.run(go())
    assert ours is not None and other is None and none is None
