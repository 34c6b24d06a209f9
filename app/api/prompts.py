"""Prompts to token ids (the engine client checks them against the vocabulary and the context)."""

from __future__ import annotations

from collections.abc import Sequence

from app.api.errors import APIError
from app.api.schemas.openai import ChatMessage, Prompt
from app.config import Settings
from app.engine.engine_client import EngineClient

# Names clients send when they cannot know a single-model server's model: TGI's documented
# "tgi" (its router serves the loaded model for it), and huggingface_hub's "dummy", which its
# InferenceClient sends to /v1/chat/completions when it was given a URL rather than a model id.
PLACEHOLDER_MODELS = frozenset({"tgi", "dummy"})


def check_model(requested: str | None, settings: Settings) -> None:
    """A "model" field must name this server's model or be a placeholder (PLACEHOLDER_MODELS):
    its served name only, never the path it was loaded from. Another name is OpenAI's 404
    model_not_found, which litellm, for one, maps to its NotFoundError."""
    if requested is None or requested == settings.model_name or requested in PLACEHOLDER_MODELS:
        return
    raise APIError(
        404,
        f"The model {requested!r} does not exist: this server serves {settings.model_name!r} "
        f"(as do the placeholders {', '.join(sorted(PLACEHOLDER_MODELS))})",
        param="model",
        code="model_not_found",
        kind="invalid_request_error",
    )


async def encode_text(engine: EngineClient, text: str, *, truncating: bool = False) -> list[int]:
    """Text to ids; the empty prompt means "start of text", GPT-2's <|endoftext|>. Unless the
    caller asked for truncation, a text that cannot fit the context window (leaving one token
    to generate) is refused before it is tokenized."""
    limit = None if truncating else engine.info.max_model_len - 1
    ids = await engine.encode(text, max_tokens=limit) if text else []
    return ids or [engine.info.eos_token_id]


async def completion_prompts(
    engine: EngineClient, prompt: Prompt, *, truncating: bool = False
) -> list[list[int]]:
    """OpenAI's four prompt forms (and null) -> one id list per prompt."""
    if prompt is None or isinstance(prompt, str):
        return [await encode_text(engine, prompt or "", truncating=truncating)]
    if not prompt:
        raise APIError(422, "prompt: the list is empty; give at least one prompt", param="prompt")
    if isinstance(prompt[0], str):
        return [
            await encode_text(engine, text, truncating=truncating)
            for text in prompt
            if isinstance(text, str)
        ]
    if isinstance(prompt[0], int):
        return [[token for token in prompt if isinstance(token, int)]]
    batches: list[list[int]] = []
    for item in prompt:
        ids = [token for token in item if isinstance(token, int)] if isinstance(item, list) else []
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
