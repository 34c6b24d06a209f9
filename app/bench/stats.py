"""Summaries of one sweep point: TTFT, inter-token gaps and end-to-end latency (mean, p50, p90,
p99), output tokens/s, requests/s and errors by kind.

Percentiles interpolate linearly between order statistics (numpy's default method). Latencies
count successful requests only; throughput is their output tokens (and their number) over the
wall time of the measured phase: first send to last answer.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from app.bench.client import RequestResult

QUANTILES = (0.5, 0.9, 0.99)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) by linear interpolation; nan for no values."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    count: int
    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        mean = math.fsum(values) / len(values) if values else math.nan
        p50, p90, p99 = (percentile(values, q) for q in QUANTILES)
        return cls(len(values), mean, p50, p90, p99)


@dataclass
class PointStats:
    completed: int
    failed: int
    errors: dict[str, int]
    duration: float  # seconds, first send to last answer
    output_tokens: int
    output_tokens_per_s: float
    requests_per_s: float
    ttft: Summary
    itl: Summary
    e2e: Summary
    mean_prompt_tokens: float | None  # as the server counted them (usage), when it said
    mean_output_tokens: float
    # Raw samples for the CDF plots (not in the JSON summary).
    ttft_samples: list[float] = field(default_factory=list, repr=False)
    itl_samples: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        del out["ttft_samples"], out["itl_samples"]
        return out


def compute(results: Sequence[RequestResult]) -> PointStats:
    ok = [r for r in results if r.ok]
    errors = Counter(r.error for r in results if r.error is not None)
    starts = [r.send_time for r in results]
    ends = [r.end_time for r in results if r.end_time is not None]
    duration = max(ends) - min(starts) if starts and ends else 0.0
    ttft = [t for r in ok if (t := r.ttft) is not None]
    itl = [gap for r in ok for gap in r.gaps]
    e2e = [t for r in ok if (t := r.latency) is not None]
    tokens = sum(r.output_tokens for r in ok)
    prompts = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    return PointStats(
        completed=len(ok),
        failed=len(results) - len(ok),
        errors=dict(sorted(errors.items())),
        duration=duration,
        output_tokens=tokens,
        output_tokens_per_s=tokens / duration if duration > 0 else 0.0,
        requests_per_s=len(ok) / duration if duration > 0 else 0.0,
        ttft=Summary.of(ttft),
        itl=Summary.of(itl),
        e2e=Summary.of(e2e),
        mean_prompt_tokens=sum(prompts) / len(prompts) if prompts else None,
        mean_output_tokens=tokens / len(ok) if ok else 0.0,
        ttft_samples=ttft,
        itl_samples=itl,
    )
