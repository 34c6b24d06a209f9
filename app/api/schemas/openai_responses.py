"""OpenAI response shapes: /v1/completions, /v1/chat/completions (answers and stream chunks),
/v1/models.

The routes build every answer and stream chunk from these models (see ResponseModel), and
tests/api/test_response_models.py validates what they send against them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.api.schemas.common import ResponseModel, Timings, omitted_if_none

FINISH_REASONS = "stop | length | timeout | abort; null until the choice ends"


class PromptTokensDetails(ResponseModel):
    cached_tokens: int = Field(description="prompt tokens served from the engine's prefix cache")


class Usage(ResponseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class CompletionLogprobs(ResponseModel):
    """OpenAI's legacy logprobs; echoed prompt tokens come first (null for the first one)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class PromptLogprob(ResponseModel):
    logprob: float
    rank: int | None = Field(description="1 = the most likely token at that position")
    decoded_token: str


class CompletionStreamChoice(ResponseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None = Field(description=FINISH_REASONS)


class CompletionChoice(CompletionStreamChoice):
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = omitted_if_none(
        "vLLM's, with prompt_logprobs only: per prompt token (null for the first), keyed by "
        "token id"
    )


class CompletionResponse(ResponseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    timings: Timings | None = omitted_if_none("Non-standard: the slowest choice's")


class CompletionChunk(ResponseModel):
    """One event of a streamed completion: one choice's new text, or (choices empty) the
    usage when stream_options.include_usage asked for it."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionStreamChoice]
    usage: Usage | None = omitted_if_none(
        "In the usage chunk, which has no choices; with stream_options.continuous_usage_stats, "
        "in every chunk too (its choice's usage so far)"
    )
    timings: Timings | None = omitted_if_none("Non-standard: with a choice's finish_reason")


class TopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(ResponseModel):
    content: list[ChatTokenLogprob] | None


class ChatResponseMessage(ResponseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(ResponseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None
    finish_reason: str | None = Field(description=FINISH_REASONS)


class ChatCompletionResponse(ResponseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    timings: Timings | None = omitted_if_none("Non-standard: the slowest choice's")


class ChatDelta(ResponseModel):
    """The role comes once per choice, first (with content ""); then content when there is
    new text; the last delta of a choice may be empty."""

    role: Literal["assistant"] | None = omitted_if_none()
    content: str | None = omitted_if_none()


class ChatChunkChoice(ResponseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: str | None = Field(description=FINISH_REASONS)


class ChatCompletionChunk(ResponseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = omitted_if_none(
        "In the usage chunk, which has no choices; with stream_options.continuous_usage_stats, "
        "in every chunk too (its choice's usage so far)"
    )
    timings: Timings | None = omitted_if_none("Non-standard: with a choice's finish_reason")


class ModelCard(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gpt2-serve"
    root: str  # where the weights came from: a hub id or a local directory
    max_model_len: int


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
