"""Request state inside the engine. Pure Python."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from app.engine.protocol import FinishReason, SamplingParams, TokenLogprobs


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"  # holds KV blocks: prefilling or decoding
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    token_ids: list[int]  # prompt followed by generated tokens
    num_prompt_tokens: int
    params: SamplingParams
    arrival_time: float
    status: Status = Status.WAITING
    num_computed: int = 0  # leading tokens whose keys/values are in the cache
    # KV blocks (kv_cache.py): the blocks holding positions [0, ...) in order, the chain hashes
    # of its full blocks cached so far, and of the full blocks it will compute (in flight).
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    pending_hashes: list[int] = field(default_factory=list)
    # Prompt tokens its prefill took from the prefix cache (reported with its first token).
    num_cached_tokens: int = 0
    finish_reason: FinishReason | None = None
    first_scheduled_time: float | None = None
    # One entry per prompt token when params.prompt_logprobs is set (the first is None: nothing
    # predicts it); filled chunk by chunk as the prompt is prefilled.
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    handle: int = 0  # AddRequest.handle: how StepResult names this request
    kv_row: int = -1  # its row in KVCacheManager.tables while it holds blocks

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def is_decoding(self) -> bool:
        """Everything but the newest token is cached: the next step feeds that one token."""
        return self.num_computed == self.num_tokens - 1

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED
