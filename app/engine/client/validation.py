"""A request checked against the model's limits, once, in the API process. Pure Python.

What comes out (`AddRequest`) is the one validated form of a request: the worker schedules it as
it is. Parameter ranges are checked when SamplingParams is built (app/engine/protocol.py); this
module adds what needs the model: token ids inside the vocabulary and prompt + max_tokens inside
the context window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from app.engine.errors import ContextLengthExceededError, InvalidRequestError
from app.engine.protocol import AddRequest, SamplingParams


@dataclass(frozen=True)
class ModelLimits:
    vocab_size: int
    max_model_len: int  # context window of one sequence


def validate_request(
    request_id: str,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    limits: ModelLimits,
    handle: int = 0,
) -> AddRequest:
    if not prompt_ids:
        raise InvalidRequestError("prompt", "must contain at least one token")
    check_token_ids("prompt", prompt_ids, limits.vocab_size)
    check_token_ids("stop_token_ids", params.stop_token_ids, limits.vocab_size)
    check_token_ids("logit_bias", list(params.logit_bias), limits.vocab_size)
    total = len(prompt_ids) + params.max_tokens
    if total > limits.max_model_len:
        raise ContextLengthExceededError(
            "max_tokens",
            f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) = {total} "
            f"exceeds the context window of {limits.max_model_len} tokens; shorten the prompt "
            "or lower max_tokens",
            max_model_len=limits.max_model_len,
            prompt_tokens=len(prompt_ids),
            max_tokens=params.max_tokens,
        )
    return AddRequest(request_id, tuple(prompt_ids), params, handle)


def check_text_fits(text: str, max_token_bytes: int, max_tokens: int) -> None:
    """Refuse, without tokenizing it, a text that needs more than max_tokens tokens whatever
    its tokenization: each token stands for at most max_token_bytes bytes of text, so L bytes
    need at least ceil(L / max_token_bytes) tokens. Never refuses a text that could fit.
    `max_tokens` is what a prompt may have: the context window less the one token it must leave
    to generate."""
    if len(text) * 4 <= max_token_bytes * max_tokens:  # at most 4 UTF-8 bytes per character
        return
    num_bytes = len(text.encode("utf-8"))
    least = math.ceil(num_bytes / max_token_bytes)
    if least > max_tokens:
        raise ContextLengthExceededError(
            "prompt",
            f"the text is {num_bytes} bytes; a token of this model covers at most "
            f"{max_token_bytes} bytes, so it needs at least {least} tokens, more than the "
            f"{max_tokens} a prompt may have in the context window; shorten it, or ask for "
            "truncation (truncate_prompt_tokens, or TGI's truncate)",
            max_model_len=max_tokens + 1,
            prompt_tokens=least,
            max_tokens=None,
            prompt_at_least=True,
        )


def check_token_ids(field: str, ids: Sequence[int], vocab_size: int) -> None:
    for token_id in ids:
        if not 0 <= token_id < vocab_size:
            raise InvalidRequestError(
                field, f"token id {token_id} is outside the vocabulary [0, {vocab_size})"
            )


def resolve_max_tokens(
    requested: int | None, prompt_len: int, max_model_len: int, cap: int | None = None
) -> int:
    """An unset max_tokens means the rest of the context window (at most `cap`, TGI's default).
    Never below 1: when the prompt already fills the window, validate_request refuses the
    request with a message naming both numbers."""
    if requested is not None:
        return requested
    rest = max_model_len - prompt_len
    return max(1, rest if cap is None else min(cap, rest))
