"""Per-request state the output processor keeps while a request is in flight. Pure Python."""

from __future__ import annotations

import asyncio
from dataclasses import InitVar, dataclass, field

from app.engine.client.detokenizer import IncrementalDetokenizer
from app.engine.protocol import (
    DeltaSink,
    FinishReason,
    GenerationDelta,
    Outcome,
    RequestRecord,
    RequestTimings,
    TokenLogprobs,
)


@dataclass
class RequestState:
    """Detokenizer, output sink and timing marks (time.monotonic) of one request."""

    request_id: str
    num_prompt_tokens: int
    detok: IncrementalDetokenizer
    arrival: float
    handle: int = 0  # AddRequest.handle
    # The caller's sink (EngineClient.add_request); without one, `queue` (generate() reads it).
    sink: InitVar[DeltaSink | None] = None
    queue: asyncio.Queue[GenerationDelta | BaseException] = field(default_factory=asyncio.Queue)
    put: DeltaSink = field(init=False, repr=False)  # each delta, and the error that ends it
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    max_gap: float = 0.0
    deadline: asyncio.TimerHandle | None = None
    num_output_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens the worker took from its prefix cache
    gaps: list[float] = field(default_factory=list)
    _num_gaps: int = -1  # token arrivals after the first

    def __post_init__(self, sink: DeltaSink | None) -> None:
        self.put = sink if sink is not None else self.queue.put_nowait

    def timings(self, now: float) -> RequestTimings:
        first = self.first_token_at or now
        last = self.last_token_at or now
        scheduled = self.scheduled_at if self.scheduled_at is not None else first
        gaps = max(0, self._num_gaps)
        return RequestTimings(
            queue=max(0.0, scheduled - self.arrival),
            time_to_first_token=first - self.arrival,
            decode=last - first,
            total=now - self.arrival,
            mean_inter_token=(last - first) / gaps if gaps else 0.0,
            max_inter_token=self.max_gap,
        )

    def on_tokens(self, now: float) -> None:
        if self.first_token_at is None:
            self.first_token_at = now
        elif self.last_token_at is not None:
            gap = now - self.last_token_at
            self.gaps.append(gap)
            if gap > self.max_gap:  # max() without the builtin's call: this runs every token
                self.max_gap = gap
        self.last_token_at = now
        self._num_gaps += 1

    def record(self, outcome: Outcome, now: float) -> RequestRecord:
        prefill = None
        if self.scheduled_at is not None and self.first_token_at is not None:
            prefill = max(0.0, self.first_token_at - self.scheduled_at)
        return RequestRecord(
            request_id=self.request_id,
            outcome=outcome,
            num_prompt_tokens=self.num_prompt_tokens,
            num_output_tokens=self.num_output_tokens,
            timings=self.timings(now),
            prefill_seconds=prefill,
            inter_token_gaps=tuple(self.gaps),
        )

    def delta(
        self,
        text: str,
        token_ids: tuple[int, ...],
        logprobs: tuple[TokenLogprobs, ...],
        finish_reason: FinishReason | None,
        stop_reason: str | int | None,
        now: float,
        prompt_logprobs: tuple[TokenLogprobs | None, ...] | None = None,
    ) -> GenerationDelta:
        """The caller-facing piece for new text/tokens; the final one carries the timings."""
        return GenerationDelta(
            self.request_id,
            text,
            token_ids,
            logprobs,
            finish_reason,
            self.num_prompt_tokens,
            self.num_output_tokens,
            stop_reason,
            self.timings(now) if finish_reason is not None else None,
            prompt_logprobs,
            self.num_cached_tokens,
        )
