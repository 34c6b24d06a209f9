"""Requests larger than the whole server: refused with 422 before any part is admitted.

Admission (app/engine/client/admission.py) counts every choice (prompt x n) as one request and
its prompt tokens against max_queued_tokens. A request with more choices than the server ever
holds at once, or more prompt tokens than may ever wait, would get 429 forever: it can never
fit, so it is bad input, and it is refused before anything is tokenized or admitted.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.api.errors import APIError
from app.api.schemas.openai import Prompt
from app.config import Settings
from app.engine.engine_client import EngineClient


def count_prompts(prompt: Prompt) -> int:
    """How many prompts OpenAI's four prompt forms (and null) hold, without tokenizing."""
    if prompt is None or isinstance(prompt, str) or not prompt or isinstance(prompt[0], int):
        return 1
    return len(prompt)


def check_choices(num_prompts: int, n: int, engine: EngineClient, settings: Settings) -> None:
    """422 when prompts x n passes max_num_seqs + max_queued_requests."""
    max_num_seqs = engine.info.max_num_seqs
    limit = max_num_seqs + settings.max_queued_requests
    choices = num_prompts * n
    if choices > limit:
        raise APIError(
            422,
            f"{num_prompts} prompt(s) x n={n} = {choices} choices, more than the {limit} requests "
            f"this server holds at once (max_num_seqs {max_num_seqs} + max_queued_requests "
            f"{settings.max_queued_requests}); split the request",
            param="n" if num_prompts == 1 else "prompt",
        )


def check_prompt_tokens(prompt_lengths: Sequence[int], settings: Settings) -> None:
    """422 when the choices' prompt tokens together pass max_queued_tokens."""
    total = sum(prompt_lengths)
    if total > settings.max_queued_tokens:
        raise APIError(
            422,
            f"the choices' prompts hold {total} tokens together, more than the "
            f"{settings.max_queued_tokens} that may wait at once (max_queued_tokens); split the "
            "request",
            param="prompt",
        )
