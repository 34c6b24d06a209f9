"""Small frozen messages the engine hands its callers (and, later, sends across processes)."""

from __future__ import annotations

from dataclasses import dataclass

from app.engine.sequence import TokenLogprobs


@dataclass(frozen=True)
class RequestOutput:
    """What one step produced for one request: new tokens, and the finish reason on the last."""

    request_id: str
    new_token_ids: tuple[int, ...]
    new_logprobs: tuple[TokenLogprobs, ...]
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class StepStats:
    """Per-step figures for metrics and the stats endpoint."""

    step_seconds: float
    num_decode_tokens: int
    num_prefill_tokens: int
    batch_size: int  # sequences that ran in the step
    num_running: int
    num_waiting: int
    kv_slots_used: int
    kv_slots_total: int


@dataclass(frozen=True)
class StepResult:
    outputs: tuple[RequestOutput, ...]
    stats: StepStats | None  # None when nothing ran
