"""Request checks that need the model's limits. Run before anything is queued. Pure Python."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.engine.errors import InvalidRequestError
from app.engine.params import SamplingParams


@dataclass(frozen=True)
class ModelLimits:
    vocab_size: int
    max_model_len: int  # context window of one sequence


def validate_request(
    prompt_ids: Sequence[int], params: SamplingParams, limits: ModelLimits
) -> None:
    if not prompt_ids:
        raise InvalidRequestError("prompt", "must contain at least one token")
    _check_ids("prompt", prompt_ids, limits.vocab_size)
    _check_ids("stop_token_ids", params.stop_token_ids, limits.vocab_size)
    _check_ids("logit_bias", list(params.logit_bias), limits.vocab_size)
    total = len(prompt_ids) + params.max_tokens
    if total > limits.max_model_len:
        raise InvalidRequestError(
            "max_tokens",
            f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) = {total} "
            f"exceeds the context window of {limits.max_model_len} tokens; shorten the prompt "
            "or lower max_tokens",
        )


def _check_ids(field: str, ids: Sequence[int], vocab_size: int) -> None:
    for token_id in ids:
        if not 0 <= token_id < vocab_size:
            raise InvalidRequestError(
                field, f"token id {token_id} is outside the vocabulary [0, {vocab_size})"
            )
