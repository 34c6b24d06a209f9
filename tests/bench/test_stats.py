"""Percentiles against numpy, and a point's statistics from requests with known timestamps."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from app.bench.client import RequestResult
from app.bench.stats import Summary, compute, percentile


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_percentile_matches_numpy(n: int) -> None:
    rng = random.Random(n)
    values = [rng.lognormvariate(0, 1) for _ in range(n)]
    for q in (0.0, 0.1, 0.5, 0.9, 0.99, 1.0):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q * 100)))


def test_percentile_known_values_and_edges() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.9) == pytest.approx(4.6)
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError):
        percentile([1.0], 1.5)
    s = Summary.of([1.0, 2.0, 3.0, 4.0])
    assert (s.count, s.mean, s.p50) == (4, 2.5, 2.5)
    assert math.isnan(Summary.of([]).mean)


def _result(send: float, arrivals: list[float], end: float, tokens: int) -> RequestResult:
    return RequestResult(
        send_time=send,
        first_token_time=arrivals[0],
        token_times=arrivals,
        end_time=end,
        output_tokens=tokens,
        prompt_tokens=8,
        usage_reported=True,
    )


def test_compute_ttft_itl_e2e_and_throughput() -> None:
    results = [
        _result(10.0, [10.5, 10.6, 10.8], 10.9, 3),  # TTFT 0.5, gaps 0.1 0.2, e2e 0.9
        _result(10.2, [11.2, 11.5], 11.6, 2),  # TTFT 1.0, gap 0.3, e2e 1.4
        RequestResult(send_time=10.4, end_time=12.0, error="http_429"),
        RequestResult(send_time=10.5, end_time=11.0, error="timeout"),
        RequestResult(send_time=10.6, end_time=11.1, error="http_429"),
    ]
    s = compute(results)
    assert (s.completed, s.failed) == (2, 3)
    assert s.errors == {"http_429": 2, "timeout": 1}
    assert s.ttft_samples == pytest.approx([0.5, 1.0])
    assert sorted(s.itl_samples) == pytest.approx([0.1, 0.2, 0.3])
    assert s.itl.mean == pytest.approx(0.2)
    assert s.e2e.mean == pytest.approx((0.9 + 1.4) / 2)
    assert s.duration == pytest.approx(2.0)  # first send 10.0 to last end 12.0
    assert s.output_tokens == 5
    assert s.output_tokens_per_s == pytest.approx(2.5)
    assert s.requests_per_s == pytest.approx(1.0)
    assert s.mean_prompt_tokens == 8
    assert "ttft_samples" not in s.summary()


def test_compute_with_nothing_completed() -> None:
    s = compute([RequestResult(send_time=1.0, end_time=2.0, error="connection")])
    assert (s.completed, s.output_tokens_per_s, s.errors) == (0, 0.0, {"connection": 1})
    assert math.isnan(s.ttft.p50)
