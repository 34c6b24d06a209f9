"""One HTTP request -> several engine requests ("choices"), and their results put back together.

OpenAI's completions take several prompts and `n` choices per prompt; choice index is
prompt_index * n + i, as OpenAI numbers them. Each choice is its own engine request.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from app.api.logprobs import TokenLogprobs
from app.api.request_context import note_prompt, track_engine_request
from app.api.streams import ChoiceStreams, StreamFactory
from app.engine.client.engine_client import EngineClient
from app.engine.params import SamplingParams
from app.engine.protocol import GenerationDelta, RequestTimings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChoicePlan:
    index: int
    prompt_index: int
    prompt_ids: list[int]
    params: SamplingParams


@dataclass(frozen=True)
class RunOptions:
    stop: Sequence[str] = ()
    include_stop_str_in_output: bool = False
    timeout: float | None = None


@dataclass
class ChoiceResult:
    """Everything one choice produced, folded from its deltas."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    num_output_tokens: int = 0
    timings: RequestTimings | None = None
    prompt_logprobs: Sequence[TokenLogprobs | None] = ()  # when the params asked for them

    def add(self, delta: GenerationDelta) -> None:
        if delta.prompt_logprobs is not None:
            self.prompt_logprobs = delta.prompt_logprobs
        self.text += delta.text
        self.token_ids.extend(delta.token_ids)
        self.logprobs.extend(delta.logprobs)
        self.num_output_tokens = delta.num_output_tokens
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
            self.stop_reason = delta.stop_reason
            self.timings = delta.timings


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def open_streams(
    engine: EngineClient, plans: Sequence[ChoicePlan], response_id: str, options: RunOptions
) -> ChoiceStreams:
    """Engine request ids are "<response id>-<choice index>": unique, and traceable from the
    id the caller sees in the body."""

    def factory(plan: ChoicePlan) -> StreamFactory:
        def start() -> AsyncIterator[GenerationDelta]:
            request_id = f"{response_id}-{plan.index}"
            track_engine_request(request_id)  # its RequestRecord belongs to this HTTP request
            return engine.generate(
                plan.prompt_ids,
                plan.params,
                request_id=request_id,
                stop=options.stop,
                include_stop_str_in_output=options.include_stop_str_in_output,
                timeout=options.timeout,
            )

        return start

    return ChoiceStreams([factory(plan) for plan in plans])


def fold(results: Sequence[Sequence[GenerationDelta]]) -> list[ChoiceResult]:
    folded = []
    for deltas in results:
        result = ChoiceResult()
        for delta in deltas:
            result.add(delta)
        folded.append(result)
    return folded


def usage(plans: Sequence[ChoicePlan], outputs: Sequence[int]) -> dict[str, int]:
    """Prompt tokens count once per prompt, however many choices it has (as OpenAI counts)."""
    prompts: dict[int, int] = {}
    for plan in plans:
        prompts[plan.prompt_index] = len(plan.prompt_ids)
    prompt_tokens = sum(prompts.values())
    completion_tokens = sum(outputs)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def log_request(
    response_id: str,
    request_id: str,
    prompts: Sequence[Sequence[int]],
    n: int,
    prompt: object,
    log_prompts: bool,
) -> None:
    """A debug line per accepted request. The request log's line when it ends (app/api/telemetry)
    carries the prompt lengths, and the prompt itself only when the operator asked for it."""
    lengths = [len(ids) for ids in prompts]
    note_prompt(lengths, prompt if log_prompts else None)
    logger.debug("%s x-request-id=%s prompt_tokens=%s n=%d", response_id, request_id, lengths, n)
