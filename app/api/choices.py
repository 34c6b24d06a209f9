"""One HTTP request -> several engine requests ("choices"), and their results put back together.

OpenAI's completions take several prompts and `n` choices per prompt; choice index is
prompt_index * n + i, as OpenAI numbers them. Each choice is its own engine request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.api.request_context import note_prompt, request_arrival, track_engine_request
from app.api.streams import ChoiceStreams, Starter
from app.engine.engine_client import EngineClient
from app.engine.protocol import (
    DeltaSink,
    GenerationDelta,
    GenerationResult,
    SamplingParams,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChoicePlan:
    index: int
    prompt_index: int
    prompt_ids: list[int]
    params: SamplingParams


def open_streams(
    engine: EngineClient, plans: Sequence[ChoicePlan], response_id: str
) -> ChoiceStreams:
    """Engine request ids are "<response id>-<choice index>": unique, and traceable from the
    id the caller sees in the body."""

    # The engine times each request (TTFT, queue, end to end) from the HTTP request's arrival,
    # so parsing, validation and tokenization count, as they do for the caller.
    arrival = request_arrival()

    def starter(plan: ChoicePlan) -> Starter:
        def start(sink: DeltaSink) -> Callable[[], None]:
            request_id = f"{response_id}-{plan.index}"
            track_engine_request(request_id)  # its RequestRecord belongs to this HTTP request
            return engine.add_request(
                plan.prompt_ids, plan.params, request_id=request_id, sink=sink, arrival=arrival
            )

        return start

    return ChoiceStreams([starter(plan) for plan in plans])


def fold(results: Sequence[Sequence[GenerationDelta]]) -> list[GenerationResult]:
    folded = []
    for deltas in results:
        result = GenerationResult()
        for delta in deltas:
            result.add(delta)
        folded.append(result)
    return folded


def usage(
    plans: Sequence[ChoicePlan], outputs: Sequence[int], cached: Sequence[int]
) -> dict[str, Any]:
    """Prompt tokens count once per prompt, however many choices it has (as OpenAI counts);
    so do its cached tokens (`cached`: per choice, prompt tokens the engine's prefix cache
    served), taken as the fewest any of its choices got: what the prompt needed computed."""
    prompts: dict[int, int] = {}
    hits: dict[int, int] = {}
    for plan, n in zip(plans, cached, strict=True):
        prompts[plan.prompt_index] = len(plan.prompt_ids)
        hits[plan.prompt_index] = min(n, hits.get(plan.prompt_index, n))
    prompt_tokens = sum(prompts.values())
    completion_tokens = sum(outputs)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": sum(hits.values())},
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
