"""Backpressure: bound what may wait, and tell callers when to come back. Pure Python.

A request is admitted while the requests not yet finished fit the running batch plus the waiting
queue, and the prompt tokens of requests not yet started fit the waiting-token budget. Beyond
that it is refused at once (HTTP 429), with Retry-After estimated from how fast requests have
been finishing lately, rather than left to wait without bound.

With --api-workers N each HTTP process counts only its own requests, against its share of the
limits: ceil(limit / N) of the requests in flight (max_num_seqs + max_queued_requests) and of the
waiting prompt tokens. The shares never add up to less than the limits (at most N - 1 more),
and a process whose share is full refuses even while another's has room.
"""

from __future__ import annotations

import math
import time
from collections import deque

from app.engine.errors import OverloadedError

RATE_WINDOW_SECONDS = 30.0


class AdmissionControl:
    """Counts what is in flight (accepted, not yet finished) and the prompt tokens still waiting
    to be scheduled, and refuses what would pass the limits."""

    def __init__(
        self,
        max_running: int,
        max_queued_requests: int,
        max_queued_tokens: int,
        processes: int = 1,
    ) -> None:
        self.max_in_flight = -(-(max_running + max_queued_requests) // processes)
        self.max_queued_requests = max_queued_requests
        self.max_queued_tokens = -(-max_queued_tokens // processes)
        self.processes = processes
        self.in_flight = 0
        self.queued_tokens = 0  # prompt tokens of requests the worker has not scheduled yet
        self._finished_at: deque[float] = deque()

    def admit(self, prompt_tokens: int) -> None:
        """Count one more request of prompt_tokens, or raise OverloadedError if it won't fit."""
        self.check(self.in_flight, self.queued_tokens, prompt_tokens)
        self.in_flight += 1
        self.queued_tokens += prompt_tokens

    def scheduled(self, prompt_tokens: int) -> None:
        """The worker started the request: its prompt no longer waits."""
        self.queued_tokens -= prompt_tokens

    def release(self, prompt_tokens: int, was_scheduled: bool, now: float | None = None) -> None:
        """The request ended, whatever the way."""
        self.in_flight -= 1
        if not was_scheduled:
            self.queued_tokens -= prompt_tokens
        self.record_finished(now)

    def check(self, in_flight: int, queued_tokens: int, prompt_tokens: int) -> None:
        """Raise OverloadedError if one more request of prompt_tokens would not fit."""
        share = "" if self.processes == 1 else f", this process's share over {self.processes}"
        if in_flight + 1 > self.max_in_flight:
            raise OverloadedError(
                f"server overloaded: {in_flight} requests in flight, the limit is "
                f"{self.max_in_flight} (max_num_seqs + max_queued_requests{share}); retry later",
                self.retry_after(in_flight + 1 - self.max_in_flight),
            )
        if queued_tokens + prompt_tokens > self.max_queued_tokens:
            raise OverloadedError(
                f"server overloaded: {queued_tokens} prompt tokens waiting, + {prompt_tokens} "
                f"would pass the limit of {self.max_queued_tokens} (max_queued_tokens{share})",
                self.retry_after(1),
            )

    def record_finished(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._finished_at.append(now)
        self._trim(now)

    def drain_rate(self, now: float | None = None) -> float:
        """Requests finished per second over the recent window (0 when unknown)."""
        now = time.monotonic() if now is None else now
        self._trim(now)
        if len(self._finished_at) < 2:
            return 0.0
        span = max(now - self._finished_at[0], 1e-3)
        return len(self._finished_at) / span

    def retry_after(self, excess: int, now: float | None = None) -> int:
        """Whole seconds until `excess` requests are likely to have drained, within [1, 60]."""
        rate = self.drain_rate(now)
        if rate <= 0:
            return 1
        return max(1, min(60, math.ceil(excess / rate)))

    def _trim(self, now: float) -> None:
        while self._finished_at and now - self._finished_at[0] > RATE_WINDOW_SECONDS:
            self._finished_at.popleft()
