"""OpenAI request shapes: /v1/completions and /v1/chat/completions (the answers' shapes are in
openai_responses.py).

Limits follow OpenAI's published ones; the extensions (top_k, min_p, ...) follow vLLM's names.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic_core import PydanticCustomError

from app.api.schemas.common import (
    MAX_N,
    Bias,
    BiasKey,
    Integral,
    NonNegativeInt,
    PositiveInt,
    RequestBody,
    Seed,
    StopList,
    StopString,
    StrictModel,
    TokenId,
    only,
)
from app.api.schemas.known_fields import (
    OPENAI_CHAT_UNUSED,
    OPENAI_STREAM_OPTIONS_UNUSED,
    TGI_CHAT_UNUSED,
    KnownFieldsOnly,
)


class StreamOptions(KnownFieldsOnly, StrictModel):
    accepted_unused = OPENAI_STREAM_OPTIONS_UNUSED

    include_usage: bool = False
    continuous_usage_stats: bool = Field(
        default=False,
        description=(
            "vLLM's: with include_usage, every chunk carries the usage of its choice so far"
        ),
    )


class SamplingFields(RequestBody):
    """Fields both OpenAI routes share. None means "the default" for clients that send nulls."""

    model: str | None = Field(default=None, description="Must name the served model when given")
    n: Annotated[int, Field(ge=1, le=MAX_N), Integral] = Field(
        default=1, description="Choices; with a seed, choice i uses seed + i"
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopString | StopList | None = None
    temperature: float | None = Field(default=1.0, ge=0, le=2, description="0 is greedy")
    top_p: float | None = Field(default=1.0, gt=0, le=1)
    presence_penalty: float | None = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=0.0, ge=-2, le=2)
    seed: Seed | None = None
    logit_bias: dict[BiasKey, Bias] | None = Field(
        default=None, description="Token id (as a string) -> bias in [-100, 100]"
    )
    user: str | None = None  # accepted and ignored
    # Extensions (vLLM's names).
    top_k: Annotated[int, Field(ge=-1), Integral] | None = Field(
        default=None, description="0 or -1: off"
    )
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    ignore_eos: bool = False
    min_tokens: NonNegativeInt = 0
    stop_token_ids: list[TokenId] | None = Field(default=None, max_length=64)
    include_stop_str_in_output: bool = False
    timeout: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="Seconds; past it the answer ends, finish_reason timeout",
    )
    truncate_prompt_tokens: PositiveInt | None = Field(
        default=None, description="Keep only the last N prompt tokens instead of failing"
    )

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        """Usage in every chunk: vLLM's continuous_usage_stats, which needs include_usage."""
        return self.include_usage and bool(
            self.stream_options and self.stream_options.continuous_usage_stats
        )


Prompt = (
    str
    | Annotated[list[str], Field(min_length=1)]
    | Annotated[list[TokenId], Field(min_length=1)]
    | Annotated[list[list[TokenId]], Field(min_length=1)]
    | None
)


class CompletionRequest(SamplingFields):
    prompt: Prompt = Field(
        default=None,
        description=(
            "A string, a list of strings, a list of token ids or a list of lists of token ids. "
            "Empty or null starts from <|endoftext|>."
        ),
    )
    max_tokens: PositiveInt | None = Field(
        default=16, description="null: the rest of the context window"
    )
    logprobs: Annotated[int, Field(ge=0, le=5), Integral] | None = None
    echo: bool = False
    suffix: None = Field(default=None, description="Not supported; must be null")
    best_of: Literal[1] | None = Field(default=None, description="Only 1; use n for more choices")
    prompt_logprobs: Annotated[int, Field(ge=0, le=20), Integral] | None = Field(
        default=None,
        description=(
            "vLLM extension: each choice gets prompt_logprobs, per prompt token (null for the "
            "first) its logprob and rank and the N most likely tokens there. Not with "
            "stream=true: both together answer 400"
        ),
        json_schema_extra={"x-not-with": {"stream": True}},
    )

    @field_validator("prompt", mode="wrap")
    @classmethod
    def _one_prompt_error(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # The union's per-branch errors would bury the point; say it once.
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError(
                "prompt_type",
                "must be a string, a list of strings, a list of token ids (integers) or a list "
                "of lists of token ids",
            ) from None

    @field_validator("prompt_logprobs")
    @classmethod
    def _not_streamed(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("stream"):
            raise PydanticCustomError("unsupported", "not available with stream=true (as in vLLM)")
        return value

    @field_validator("suffix", mode="before")
    @classmethod
    def _no_suffix(cls, value: Any) -> Any:
        if value is not None:
            raise PydanticCustomError("unsupported", "not supported by GPT-2; must be null")
        return value

    _best_of_one = field_validator("best_of", mode="before")(
        only(1, "only 1 is supported; use n for more choices")
    )


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None  # accepted and ignored

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class TextFormat(StrictModel):
    type: Literal["text"]


class ChatCompletionRequest(SamplingFields):
    accepted_unused = OPENAI_CHAT_UNUSED | TGI_CHAT_UNUSED

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: PositiveInt | None = Field(
        default=None, description="Deprecated alias of max_completion_tokens"
    )
    max_completion_tokens: PositiveInt | None = Field(
        default=None, description="null: the rest of the context window"
    )
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20), Integral] | None = Field(
        default=None,
        description="The N most likely tokens at each position. Needs logprobs=true: "
        "without it, 400",
        json_schema_extra={"x-requires": {"logprobs": True}},
    )
    tools: Annotated[list[Any], Field(max_length=0)] | None = Field(
        default=None, description="Not supported; must be null or empty"
    )
    functions: Annotated[list[Any], Field(max_length=0)] | None = Field(
        default=None, description="Deprecated form of tools; not supported: null or empty"
    )
    response_format: TextFormat | None = Field(default=None, description="Only {'type': 'text'}")

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise PydanticCustomError("logprobs", "needs logprobs set to true")
        return value

    @field_validator("tools", "functions", mode="before")
    @classmethod
    def _no_tools(cls, value: Any) -> Any:
        if value:
            raise PydanticCustomError("unsupported", "tools are not supported by GPT-2")
        return value

    @field_validator("response_format", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, dict) or value.get("type") != "text"):
            raise PydanticCustomError("unsupported", "only {'type': 'text'} is supported")
        return value

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens
