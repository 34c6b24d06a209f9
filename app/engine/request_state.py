"""Per-request state the EngineClient keeps while a request is in flight. Pure Python."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from app.engine.detokenizer import IncrementalDetokenizer
from app.engine.protocol import GenerationDelta, RequestTimings


@dataclass
class RequestState:
    """Detokenizer, output queue and timing marks (time.monotonic) of one request."""

    request_id: str
    num_prompt_tokens: int
    detok: IncrementalDetokenizer
    arrival: float
    queue: asyncio.Queue[GenerationDelta | BaseException] = field(default_factory=asyncio.Queue)
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    max_gap: float = 0.0
    deadline: asyncio.TimerHandle | None = None
    _num_gaps: int = -1  # token arrivals after the first

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
            self.max_gap = max(self.max_gap, now - self.last_token_at)
        self.last_token_at = now
        self._num_gaps += 1
