"""Every Prometheus object of the service, and the record_* functions the engine client feeds.

Names follow vLLM's (`vllm:` -> `gpt2_`). Each app owns its registry (tests build many apps in
one process). Labels are bounded: finished_reason and reason take the values listed below and
nothing else; no prompt text, no request ids.

What is counted, and when (the unit is one engine request: one prompt, one choice):

- Tokens: gpt2_generation_tokens_total grows by each finished request's output tokens (the
  completion_tokens of its answer), gpt2_prompt_tokens_total by the prompt tokens of every
  request the engine accepted. Both move when a request ends, not token by token.
- Latencies are observed when a request ends, from its RequestRecord: time to first token, queue
  and prefill once per request that produced a token; every inter-token gap; end-to-end and
  decode times and the token-count histograms for requests the engine finished (stop, length,
  abort, timeout).
- Outcomes: each request counts exactly once, either in gpt2_request_success_total or in
  gpt2_request_failure_total, so their sum is the number of requests. A deadline that ran out
  (finish_reason "timeout", HTTP 200 with a cut-off answer) is a failure {reason="timeout"} and
  not a success: the caller did not get the answer it asked for, and counting it in both would
  count it twice. A request refused before it reached the engine (422, 429, 503) or whose
  answer failed in the HTTP layer (500) counts once, as that failure (app/api/telemetry.py
  decides which of the engine and the HTTP layer reports a request).
- Gauges from the worker's last step; when nothing is in flight they read 0 (the worker sends
  no statistics while idle), and worker_up / ready / restarts are read from the client at
  scrape time.

With --api-workers N > 1 (app/api_workers.py) every HTTP process counts what it served in
prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR: a fresh directory per server
run, set by the supervisor), and /metrics, whichever process answers, adds up the files of all of
them: each request still counts once. The worker's per-step figures (step time and batch
histograms, shared prefix tokens, host seconds) reach every process; process 0 alone counts them.
Requests in flight are a livesum gauge each process sets at every step and request end; the
other gauges are the worker's and read the same from any process. The per-process collectors
(process_*, python_gc_*) are left out: one process's figures would pass for the server's.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from app.engine.engine_client import EngineClient
from app.engine.protocol import (
    ENGINE_FINISHED,
    Outcome,
    RequestRecord,
    StepStats,
)

# Token counts: powers of two up to GPT-2's context window (1024), and beyond for other models.
TOKEN_BUCKETS = tuple(float(2**k) for k in range(15))  # 1 .. 16384
BATCH_BUCKETS = tuple(float(2**k) for k in range(11))  # 1 .. 1024 sequences per step


def multiprocess_dir() -> str | None:
    """Where the HTTP processes of --api-workers keep their metrics (prometheus_client reads it
    from the environment when it is imported); None for one process."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    def __init__(
        self,
        latency_buckets: Sequence[float],
        *,
        engine: Callable[[], EngineClient | None] = lambda: None,
        max_queued_requests: int | None = None,
        registry: CollectorRegistry | None = None,
        process_metrics: bool = True,
        count_steps: bool = True,
        multiprocess: str | None = None,
    ) -> None:
        """`count_steps`: count the worker's per-step figures here (one process of several
        does). `multiprocess`: the directory of prometheus_client's multiprocess mode; then
        `registry` (what /metrics exposes) adds up every process's files."""
        own = registry or CollectorRegistry(auto_describe=True)
        self.registry = own
        self.count_steps = count_steps
        self._declare_histograms(tuple(latency_buckets))
        self._declare_counters()
        if max_queued_requests is not None:
            limit = Gauge(
                "gpt2_max_queued_requests",
                "Admission limit: requests that may wait beyond the running batch.",
                registry=own,
                multiprocess_mode="max",
            )
            limit.set(max_queued_requests)
        self.in_flight: Gauge | None = None
        if multiprocess is not None:
            self.in_flight = Gauge(
                "gpt2_num_requests_in_flight",
                "Requests the API processes hold: waiting, running or streaming out.",
                registry=own,
                multiprocess_mode="livesum",
            )
            self.registry = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(self.registry, path=multiprocess)  # type: ignore[no-untyped-call]
        self.state = EngineStateCollector(engine, local_in_flight=multiprocess is None)
        self.registry.register(self.state)
        if process_metrics and multiprocess is None:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def _declare_histograms(self, lat: tuple[float, ...]) -> None:
        def histogram(name: str, doc: str, buckets: tuple[float, ...] = lat) -> Histogram:
            return Histogram(name, doc, registry=self.registry, buckets=buckets)

        self.ttft = histogram(
            "gpt2_time_to_first_token_seconds",
            "HTTP arrival to first generated token, per request.",
        )
        self.itl = histogram(
            "gpt2_inter_token_latency_seconds", "Gap between consecutive tokens of a request."
        )
        self.e2e = histogram(
            "gpt2_e2e_request_latency_seconds",
            "Arrival to end, per request the engine finished (stop, length, abort, timeout).",
        )
        self.queue = histogram(
            "gpt2_request_queue_time_seconds", "Arrival to first scheduled in the worker."
        )
        self.prefill = histogram(
            "gpt2_request_prefill_time_seconds", "First scheduled to first token (prefill)."
        )
        self.decode = histogram(
            "gpt2_request_decode_time_seconds", "First token to last token (decode)."
        )
        self.step = histogram(
            "gpt2_engine_step_seconds", "Duration of one engine step (schedule, forward, sample)."
        )
        self.prompt_len = histogram(
            "gpt2_request_prompt_tokens", "Prompt length of finished requests.", TOKEN_BUCKETS
        )
        self.generation_len = histogram(
            "gpt2_request_generation_tokens",
            "Generated tokens of finished requests.",
            TOKEN_BUCKETS,
        )
        self.step_batch = histogram(
            "gpt2_engine_step_batch_size", "Sequences that ran in one engine step.", BATCH_BUCKETS
        )

    def _declare_counters(self) -> None:
        r = self.registry
        self.prompt_tokens = Counter(
            "gpt2_prompt_tokens", "Prompt tokens of requests the engine accepted.", registry=r
        )
        self.generation_tokens = Counter(
            "gpt2_generation_tokens", "Generated tokens (completion_tokens served).", registry=r
        )
        # Named and counted as vLLM's: tokens, so hits / queries is the hit rate.
        self.prefix_cache_queries = Counter(
            "gpt2_prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache when their sequence was admitted.",
            registry=r,
        )
        self.prefix_cache_hits = Counter(
            "gpt2_prefix_cache_hits",
            "Prompt tokens found in the prefix cache (their KV blocks reused, not computed).",
            registry=r,
        )
        self.preemptions = Counter(
            "gpt2_num_preemptions",
            "Running sequences preempted (blocks freed, recomputed later) when KV blocks ran out.",
            registry=r,
        )
        self.host_seconds = Counter(
            "gpt2_engine_host_seconds",
            "Worker CPU seconds outside the model forward and sampling (scheduling, outputs, "
            "messages): the host cost per token is its rate over gpt2_generation_tokens_total.",
            registry=r,
        )
        self.success = Counter(
            "gpt2_request_success",
            "Requests the engine finished, by finish reason.",
            ["finished_reason"],
            registry=r,
        )
        self.failure = Counter(
            "gpt2_request_failure",
            "Requests that failed, by reason (each request counts once: success or failure).",
            ["reason"],
            registry=r,
        )
        for outcome in Outcome:  # every series exists from the start: rate() works at once
            (self.success if outcome.is_success else self.failure).labels(outcome)

    # fed by the engine client --------------------------------------------------------------

    def record_step(self, stats: StepStats) -> None:
        """Once per worker step (AsyncEngine's stats_sink)."""
        self.state.last_step = stats
        if not self.count_steps:
            return
        self.step.observe(stats.step_seconds)
        if stats.batch_size:
            self.step_batch.observe(stats.batch_size)
        self.prefix_cache_queries.inc(stats.prefix_cache_queries)
        self.prefix_cache_hits.inc(stats.prefix_cache_hits)
        self.preemptions.inc(stats.num_preemptions)
        self.host_seconds.inc(stats.host_seconds)

    def set_in_flight(self, engine: EngineClient | None) -> None:
        """This process's requests in flight, in multiprocess mode (a no-op otherwise)."""
        if self.in_flight is not None and engine is not None:
            self.in_flight.set(engine.num_in_flight)

    def record_work(self, record: RequestRecord) -> None:
        """Tokens and latencies of one finished request; its outcome is counted separately."""
        t = record.timings
        if record.outcome is not Outcome.VALIDATION:
            self.prompt_tokens.inc(record.num_prompt_tokens)
        self.generation_tokens.inc(record.num_output_tokens)
        if record.num_output_tokens > 0:
            self.ttft.observe(t.time_to_first_token)
            self.queue.observe(t.queue)
            if record.prefill_seconds is not None:
                self.prefill.observe(record.prefill_seconds)
        observe_all(self.itl, record.inter_token_gaps)
        if record.outcome in ENGINE_FINISHED:
            self.e2e.observe(t.total)
            self.decode.observe(t.decode)
            self.prompt_len.observe(record.num_prompt_tokens)
            self.generation_len.observe(record.num_output_tokens)

    def record_outcome(self, outcome: Outcome) -> None:
        """Count one request as a success (a finish reason) or a failure (any other outcome)."""
        (self.success if outcome.is_success else self.failure).labels(outcome).inc()


def observe_all(histogram: Histogram, values: Sequence[float]) -> None:
    """histogram.observe(v) for every v, with one increment per bucket a value falls in rather
    than one per value: a request's inter-token gaps are one value per token, and each observe
    takes a lock and walks the buckets (~2.7 µs: the HTTP process's largest per-token cost in
    metrics). prometheus_client has no public bulk observe, so this counts into the fields its
    observe() increments (the same in multiprocess mode, where they are memory-mapped values),
    and falls back to observe() where they are not there (tests/observability/
    test_observe_all.py compares the two, and checks these fields are there)."""
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    if buckets is None or total is None or bounds is None or len(values) < 2:
        for value in values:
            histogram.observe(value)
        return
    counts: dict[int, int] = {}
    for value in values:
        i = bisect_left(bounds, value)  # observe()'s bucket: the first bound >= the value
        counts[i] = counts.get(i, 0) + 1
    for i, count in counts.items():
        buckets[i].inc(count)
    total.inc(sum(values))


class EngineStateCollector(Collector):
    """Gauges read at scrape time: the worker's last step, and the client's own state.
    `local_in_flight`: this process holds every request (one HTTP process): it reports them,
    and the worker's figures read 0 when it holds none."""

    def __init__(
        self, engine: Callable[[], EngineClient | None], local_in_flight: bool = True
    ) -> None:
        self._engine = engine
        self._local_in_flight = local_in_flight
        self.last_step: StepStats | None = None

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        engine = self._engine()
        s = self.last_step
        alive = engine is not None and engine.is_worker_alive
        in_flight = engine.num_in_flight if engine is not None else None
        if self._local_in_flight:
            idle = not alive or in_flight == 0
        else:  # the worker's own word: its last step left nothing running or waiting
            idle = not alive or (s is not None and s.num_running + s.num_waiting == 0)
        running = 0 if idle or s is None else s.num_running
        waiting = 0 if idle or s is None else s.num_waiting
        batch = 0 if idle or s is None else s.batch_size
        used = 0 if idle or s is None else s.kv_blocks_used
        usage = used / s.kv_blocks_total if s is not None and s.kv_blocks_total else 0.0
        yield _gauge(
            "gpt2_num_requests_running", "Sequences holding KV blocks in the worker.", running
        )
        yield _gauge(
            "gpt2_num_requests_waiting",
            "Requests waiting for the worker to schedule them.",
            waiting,
        )
        yield _gauge("gpt2_batch_size", "Sequences in the worker's last step.", batch)
        yield _gauge(
            "gpt2_kv_cache_usage_perc",
            "Fraction of KV cache blocks held by sequences (0 to 1).",
            usage,
        )
        if self._local_in_flight:
            yield _gauge(
                "gpt2_num_requests_in_flight",
                "Requests the API process holds: waiting, running or streaming out.",
                in_flight or 0,
            )
        yield _gauge("gpt2_worker_up", "1 while the engine worker process is alive.", alive)
        yield _gauge(
            "gpt2_ready",
            "1 while the engine takes requests (loaded, warmed up, not draining).",
            engine is not None and engine.is_ready,
        )
        restarts = CounterMetricFamily(
            "gpt2_worker_restarts", "Times the engine worker was restarted after dying."
        )
        restarts.add_metric([], float(engine.worker_restarts if engine is not None else 0))
        yield restarts


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))
