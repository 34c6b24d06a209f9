"""A context overflow in each API's own words.

Clients tell an overflow from other bad input by its wording: litellm raises
ContextWindowExceededError (which its router's context-window fallbacks key on) when the
message holds "This model's maximum context length is" (OpenAI's and vLLM's) or "`inputs`
tokens + `max_new_tokens` must be" (TGI's). So the OpenAI routes say it as OpenAI does, with
code `context_length_exceeded`, and TGI's routes as TGI's router does.
"""

from __future__ import annotations

from app.api.dialect import Dialect
from app.engine.errors import ContextLengthExceededError

CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # OpenAI's error code


def openai_message(exc: ContextLengthExceededError) -> str:
    window = f"This model's maximum context length is {exc.max_model_len} tokens."
    prompt = f"{'at least ' if exc.prompt_at_least else ''}{exc.prompt_tokens}"
    if exc.max_tokens is None:
        return (
            f"{window} However, your messages resulted in {prompt} tokens. Please reduce the "
            "length of the messages."
        )
    total = exc.prompt_tokens + exc.max_tokens
    return (
        f"{window} However, you requested {total} tokens ({prompt} in the messages, "
        f"{exc.max_tokens} in the completion). Please reduce the length of the messages or "
        "completion."
    )


def tgi_message(exc: ContextLengthExceededError) -> str:
    prompt = f"{'at least ' if exc.prompt_at_least else ''}{exc.prompt_tokens}"
    if exc.max_tokens is None:
        return f"`inputs` must have less than {exc.max_model_len} tokens. Given: {prompt}"
    return (
        f"`inputs` tokens + `max_new_tokens` must be <= {exc.max_model_len}. Given: {prompt} "
        f"`inputs` tokens and {exc.max_tokens} `max_new_tokens`"
    )


def context_message(exc: ContextLengthExceededError, dialect: Dialect) -> str:
    return tgi_message(exc) if dialect == "tgi" else openai_message(exc)
