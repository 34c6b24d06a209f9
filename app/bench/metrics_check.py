"""Cross-check the client's figures against gpt2-serve's own histograms.

When the target serves gpt2-serve's /metrics, the runner scrapes it before and after each
sweep point; the difference of the two scrapes is the point's own traffic (so nothing else may
use the server meanwhile). For time to first token, inter-token latency and end-to-end latency
it compares the server's count, mean (exact: _sum / _count) and p50 (interpolated inside its
bucket, like Prometheus' histogram_quantile) with the client's.

Why the client must read at least the server, minus a small tolerance. gpt2-serve times a
request in the API process from the moment it saw its headers (after the client sent them, the
bytes crossed the network and waited for the event loop; the body, its parsing and tokenization
count) to the moment a token was handed to the response (before it was framed, written,
delivered and parsed by the client). Each server
interval lies inside the client's interval of the same request, so every client TTFT and
end-to-end latency is at least the server's, and so are their mean and median. The tolerance
(`floor`, 2 ms by default) covers float rounding and the two processes reading the clock at
slightly different moments; it says nothing about the network. Going the other way, the client
may exceed the server by its own overhead (HTTP, JSON, event loop): up to `absolute` +
`relative` x the server value counts as agreement. For the p50 the server's exact median is
only known to lie in its bucket [lo, hi], so the client's p50 must lie in [lo - floor,
hi + overhead].

Inter-token latency is not one-sided: a gap is the difference of two delivery delays, which can
be shorter or longer on the client. Its mean is compared both ways within absolute + relative
x server. The client's mean is its first-to-last arrival span over (output tokens - 1) per
request, which is what the server's sum of gaps over its count measures; the client's p50 is
over chunk gaps (a chunk can carry two tokens when the server held back a partial character).

Counts must match exactly: one TTFT and one end-to-end observation per completed request,
output tokens - 1 gaps per request, one success each. When any request of the point failed,
the server also counted parts of those, and the check is skipped (said so in the report).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.bench.client import RequestResult
from app.bench.stats import percentile

HISTOGRAMS = {
    "ttft": "gpt2_time_to_first_token_seconds",
    "itl": "gpt2_inter_token_latency_seconds",
    "e2e": "gpt2_e2e_request_latency_seconds",
}
SUCCESS = "gpt2_request_success"  # counter family (samples: gpt2_request_success_total)


@dataclass(frozen=True)
class Histogram:
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), +Inf last
    count: float
    sum: float

    def minus(self, earlier: Histogram) -> Histogram:
        before = dict(earlier.buckets)
        return Histogram(
            tuple((le, c - before.get(le, 0.0)) for le, c in self.buckets),
            self.count - earlier.count,
            self.sum - earlier.sum,
        )

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else math.nan

    def bucket(self, q: float) -> tuple[float, float]:
        """The bounds (lo, hi] of the bucket holding the q-quantile."""
        lo, hi, _, _ = self._locate(q)
        return lo, hi

    def quantile(self, q: float) -> float:
        """Prometheus' histogram_quantile: linear inside the bucket; the +Inf bucket answers
        its lower bound."""
        if not self.count:
            return math.nan
        lo, hi, below, cumulative = self._locate(q)
        if math.isinf(hi):
            return lo
        return lo + (hi - lo) * (q * self.count - below) / (cumulative - below)

    def _locate(self, q: float) -> tuple[float, float, float, float]:
        """(lower bound, upper bound, count below, count up to the upper bound) of the bucket
        where the q-quantile's rank falls."""
        rank, lower, below = q * self.count, 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank and cumulative > below:
                return lower, le, below, cumulative
            lower, below = le, cumulative
        return lower, math.inf, below, below


@dataclass(frozen=True)
class Snapshot:
    histograms: dict[str, Histogram]
    successes: float


def parse(text: str) -> Snapshot:
    """The histograms of HISTOGRAMS and the success total from Prometheus text exposition."""
    histograms: dict[str, Histogram] = {}
    successes = 0.0
    for family in text_string_to_metric_families(text):
        if family.name in HISTOGRAMS.values():
            buckets: list[tuple[float, float]] = []
            count = total = 0.0
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets.append((float(sample.labels["le"]), sample.value))
                elif sample.name.endswith("_count"):
                    count = sample.value
                elif sample.name.endswith("_sum"):
                    total = sample.value
            histograms[family.name] = Histogram(tuple(sorted(buckets)), count, total)
        elif family.name == SUCCESS:
            successes = sum(s.value for s in family.samples if s.name.endswith("_total"))
    return Snapshot(histograms, successes)


async def scrape(client: httpx.AsyncClient, base_url: str) -> Snapshot | None:
    """/metrics parsed, or None when the target is not gpt2-serve (no such page or metrics)."""
    try:
        response = await client.get(base_url + "/metrics")
        if response.status_code != 200:
            return None
        snapshot = parse(response.text)
    except (httpx.HTTPError, ValueError):
        return None
    return snapshot if set(HISTOGRAMS.values()) <= snapshot.histograms.keys() else None


async def scrape_settled(
    client: httpx.AsyncClient,
    base_url: str,
    before: Snapshot,
    completed: int,
    wait: float = 5.0,
) -> Snapshot | None:
    """Scrape until the server has counted `completed` more requests (it records a request as
    its answer ends, which can be just after the client read [DONE]), for at most `wait` s."""
    deadline = time.monotonic() + wait
    while True:
        after = await scrape(client, base_url)
        if after is None or time.monotonic() >= deadline:
            return after
        e2e = HISTOGRAMS["e2e"]
        counted = after.histograms[e2e].count - before.histograms[e2e].count
        if counted >= completed and after.successes - before.successes >= completed:
            return after
        await asyncio.sleep(0.1)


@dataclass(frozen=True)
class Tolerance:
    floor: float = 0.002  # the client may read this much below the server
    absolute: float = 0.05  # client overhead allowed above the server, seconds ...
    relative: float = 0.10  # ... plus this fraction of the server's value

    def overhead(self, server: float) -> float:
        return self.absolute + self.relative * server


@dataclass
class Comparison:
    metric: str
    server_count: int
    client_count: int
    server_mean: float
    client_mean: float
    server_p50: float
    server_p50_bucket: tuple[float, float]
    client_p50: float
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def agree(self) -> bool:
        return all(self.checks.values())


@dataclass
class CrossCheck:
    comparisons: list[Comparison]
    server_successes: int
    client_completed: int
    tolerance: Tolerance
    skipped: str | None = None

    @property
    def agree(self) -> bool | None:
        if self.skipped is not None:
            return None
        return self.server_successes == self.client_completed and all(
            c.agree for c in self.comparisons
        )

    def summary(self) -> dict[str, object]:
        return {
            "agree": self.agree,
            "skipped": self.skipped,
            "server_successes": self.server_successes,
            "client_completed": self.client_completed,
            "tolerance": vars(self.tolerance),
            "metrics": [
                {**vars(c), "metric": HISTOGRAMS[c.metric], "agree": c.agree}
                for c in self.comparisons
            ],
        }


def cross_check(
    before: Snapshot,
    after: Snapshot,
    results: Sequence[RequestResult],
    tolerance: Tolerance | None = None,
) -> CrossCheck:
    tol = tolerance or Tolerance()
    ok = [r for r in results if r.ok]
    failed = len(results) - len(ok)
    check = CrossCheck([], round(after.successes - before.successes), len(ok), tol)
    if failed:
        check.skipped = f"{failed} request(s) failed; the server counted parts of them too"
    ttft = [t for r in ok if (t := r.ttft) is not None]
    e2e = [t for r in ok if (t := r.latency) is not None]
    gaps = [g for r in ok for g in r.gaps]
    itl_count = sum(max(r.output_tokens - 1, 0) for r in ok)
    itl_mean = sum(r.decode_span for r in ok) / itl_count if itl_count else math.nan
    client = {
        "ttft": (len(ttft), _mean(ttft), percentile(ttft, 0.5)),
        "itl": (itl_count, itl_mean, percentile(gaps, 0.5)),
        "e2e": (len(e2e), _mean(e2e), percentile(e2e, 0.5)),
    }
    for metric, name in HISTOGRAMS.items():
        server = after.histograms[name].minus(before.histograms[name])
        count, mean, p50 = client[metric]
        c = Comparison(
            metric,
            round(server.count),
            count,
            server.mean,
            mean,
            server.quantile(0.5),
            server.bucket(0.5),
            p50,
        )
        c.checks = _checks(c, tol, one_sided=metric != "itl")
        check.comparisons.append(c)
    return check


def _checks(c: Comparison, tol: Tolerance, *, one_sided: bool) -> dict[str, bool]:
    lo, hi = c.server_p50_bucket
    below_mean = tol.floor if one_sided else tol.overhead(c.server_mean)
    below_p50 = tol.floor if one_sided else tol.overhead(lo)
    return {
        "count": c.server_count == c.client_count,
        "mean": c.server_mean - below_mean
        <= c.client_mean
        <= c.server_mean + tol.overhead(c.server_mean),
        "p50": lo - below_p50 <= c.client_p50 <= hi + tol.overhead(hi),
    }


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan
