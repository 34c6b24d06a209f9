"""Prompts to token ids, with the checks that need the model's runtime limits (vocab, context)."""

from __future__ import annotations

from collections.abc import Sequence

from app.api.errors import APIError
from app.api.schemas.openai import ChatMessage, Prompt
from app.config import Settings
from app.engine.client.engine_client import EngineClient


def check_model(requested: str | None, settings: Settings) -> None:
    """A "model" field must name this server's model (as OpenAI and vLLM answer: 404)."""
    if requested is None or requested in (settings.model_name, settings.engine_config().model):
        return
    raise APIError(
        404,
        f"model {requested!r} is not served here; this server serves {settings.model_name!r}",
        param="model",
    )


def check_token_ids(ids: Sequence[int], vocab_size: int, field: str) -> None:
    for token_id in ids:
        if not 0 <= token_id < vocab_size:
            raise APIError(
                422,
                f"{field}: token id {token_id} is outside the vocabulary [0, {vocab_size})",
                param=field,
            )


async def encode_text(engine: EngineClient, text: str) -> list[int]:
    """Text to ids; the empty prompt means "start of text", GPT-2's <|endoftext|>."""
    ids = await engine.encode(text) if text else []
    return ids or [engine.info.eos_token_id]


async def completion_prompts(engine: EngineClient, prompt: Prompt) -> list[list[int]]:
    """OpenAI's four prompt forms (and null) -> one id list per prompt."""
    vocab = engine.info.vocab_size
    if prompt is None or isinstance(prompt, str):
        return [await encode_text(engine, prompt or "")]
    if not prompt:
        raise APIError(422, "prompt: the list is empty; give at least one prompt", param="prompt")
    if isinstance(prompt[0], str):
        return [await encode_text(engine, text) for text in prompt if isinstance(text, str)]
    if isinstance(prompt[0], int):
        ids = [token for token in prompt if isinstance(token, int)]
        check_token_ids(ids, vocab, "prompt")
        return [ids]
    batches: list[list[int]] = []
    for item in prompt:
        ids = [token for token in item if isinstance(token, int)] if isinstance(item, list) else []
        check_token_ids(ids, vocab, "prompt")
        batches.append(ids or [engine.info.eos_token_id])
    return batches


def render_chat(messages: Sequence[ChatMessage], settings: Settings) -> str:
    """The plain template (GPT-2 has none): "{role}: {content}\\n" per message, then "assistant:".

    Only the template string is formatted, never the message text, so braces in a message are
    just text.
    """
    rendered = "".join(
        settings.chat_template.format(role=message.role, content=message.text)
        for message in messages
    )
    return rendered + settings.chat_generation_prompt


def truncate_prompt(ids: list[int], keep_last: int | None) -> list[int]:
    if keep_last is None or len(ids) <= keep_last:
        return ids
    return ids[-keep_last:]


def resolve_max_tokens(requested: int | None, prompt_len: int, max_model_len: int) -> int:
    """None means "the rest of the context window". Never below 1: when the prompt already
    fills the window the engine rejects the request with a message naming both numbers."""
    if requested is not None:
        return requested
    return max(1, max_model_len - prompt_len)
