"""The server's prefix cache hit rate over a run, from two scrapes of its /metrics.

gpt2-serve counts, in prompt tokens as vLLM does, how many tokens it looked up in its prefix
cache (`gpt2_prefix_cache_queries_total`) and how many of those it found there
(`gpt2_prefix_cache_hits_total`). The counters run from the server's start, so a run's hit rate
is the ratio of their increases between a scrape before the run and one after it (nothing else
may use the server meanwhile). A server without the counters (another server, or a gpt2-serve
from before they existed) has no hit rate: None here, "n/a" in the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

HITS = "gpt2_prefix_cache_hits"
QUERIES = "gpt2_prefix_cache_queries"
NOT_EXPOSED = "n/a (server exposes no prefix cache metrics)"


@dataclass(frozen=True)
class PrefixCounters:
    hits: float
    queries: float


@dataclass(frozen=True)
class HitRate:
    """Prompt tokens served from the cache (`hits`) out of those looked up (`queries`)."""

    hits: int
    queries: int

    @property
    def rate(self) -> float:
        return self.hits / self.queries if self.queries else math.nan

    def describe(self) -> str:
        if not self.queries:
            return "n/a (the server looked up no prompt tokens)"
        return f"{self.rate:.1%} ({self.hits:,} of {self.queries:,} prompt tokens)"

    def to_json(self) -> dict[str, object]:
        return {"hits": self.hits, "queries": self.queries, "hit_rate": self.rate}


def parse_counters(text: str) -> PrefixCounters | None:
    """Both counters from Prometheus text exposition (summed over any labels, e.g. one series
    per API process), or None unless both are there."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        # A counter declared with `# TYPE` is named without its _total; an untyped one with it.
        name = family.name.removesuffix("_total")
        if name in (HITS, QUERIES):
            samples = [s.value for s in family.samples if s.name == name + "_total"]
            totals[name] = totals.get(name, 0.0) + sum(samples)
    if HITS not in totals or QUERIES not in totals:
        return None
    return PrefixCounters(hits=totals[HITS], queries=totals[QUERIES])


async def scrape_counters(client: httpx.AsyncClient, base_url: str) -> PrefixCounters | None:
    """The counters now, or None when the target has no /metrics or no such counters."""
    try:
        response = await client.get(base_url + "/metrics")
        if response.status_code != 200:
            return None
        return parse_counters(response.text)
    except (httpx.HTTPError, ValueError):
        return None


def hit_rate(before: PrefixCounters | None, after: PrefixCounters | None) -> HitRate | None:
    """The hit rate of what happened between the two scrapes; None when either had none."""
    if before is None or after is None:
        return None
    return HitRate(
        hits=round(after.hits - before.hits), queries=round(after.queries - before.queries)
    )
