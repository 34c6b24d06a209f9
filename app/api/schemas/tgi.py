"""TGI request and response shapes: /generate, /generate_stream, POST /, /info.

huggingface_hub's InferenceClient.text_generation sends every parameter, unset ones as null, so
every field accepts null. Features GPT-2 serving does not have (typical_p, grammar, adapters,
watermarking, best_of > 1) are rejected with 422 when set rather than silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from app.api.schemas.common import (
    Integral,
    PositiveInt,
    RequestBody,
    ResponseModel,
    Seed,
    StopList,
    StrictModel,
    Timings,
    omitted_if_none,
    only,
)
from app.api.schemas.known_fields import TGI_GENERATE_UNUSED, KnownFieldsOnly

DEFAULT_MAX_NEW_TOKENS = 100  # TGI's documented default, capped to what fits in the context


class GenerateParameters(KnownFieldsOnly, StrictModel):
    max_new_tokens: PositiveInt | None = Field(
        default=None,
        description=f"Default {DEFAULT_MAX_NEW_TOKENS}, capped to the context window",
    )
    do_sample: bool | None = Field(
        default=None,
        description=(
            "Sample instead of greedy decoding. As in TGI, setting temperature != 1, top_k or "
            "top_p < 1 also turns sampling on."
        ),
    )
    temperature: float | None = Field(default=None, gt=0, le=100)
    top_k: PositiveInt | None = None
    top_p: float | None = Field(default=None, gt=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: Seed | None = None
    stop: StopList | None = None
    details: bool | None = False
    decoder_input_details: bool | None = False
    return_full_text: bool | None = Field(
        default=None,
        description="Prepend the inputs; default false on /generate, true on POST / (TGI)",
    )
    truncate: PositiveInt | None = Field(
        default=None, description="Keep only the last N input tokens"
    )
    top_n_tokens: Annotated[int, Field(ge=0, le=20), Integral] | None = None
    best_of: Literal[1] | None = Field(default=None, description="Only 1 is supported")
    typical_p: None = Field(default=None, description="Not supported; must be null")
    watermark: Literal[False] | None = Field(default=False, description="Not supported")
    grammar: None = Field(default=None, description="Not supported; must be null")
    adapter_id: None = Field(default=None, description="Not supported; must be null")

    @field_validator("typical_p", "grammar", "adapter_id", mode="before")
    @classmethod
    def _must_be_null(cls, value: Any) -> Any:
        if value is not None:
            raise PydanticCustomError("unsupported", "not supported by this server; must be null")
        return value

    _no_watermark = field_validator("watermark", mode="before")(
        only(False, "watermarking is not supported; must be false or null")
    )
    _best_of_one = field_validator("best_of", mode="before")(only(1, "only 1 is supported"))

    @property
    def sampling(self) -> bool:
        """TGI's rule: do_sample, or any warper that changes the distribution."""
        return bool(
            self.do_sample
            or (self.temperature is not None and self.temperature != 1.0)
            or (self.top_k is not None and self.top_k > 0)
            or (self.top_p is not None and self.top_p < 1.0)
        )


_DEFAULT_PARAMETERS = GenerateParameters()


class GenerateRequest(RequestBody):
    accepted_unused = TGI_GENERATE_UNUSED

    inputs: str = Field(description="The prompt; empty starts from <|endoftext|>")
    parameters: GenerateParameters | None = None
    stream: bool = Field(default=False, description="Only read by POST /, which serves both")

    @property
    def params(self) -> GenerateParameters:
        return self.parameters or _DEFAULT_PARAMETERS


# ---- responses ---------------------------------------------------------------------------

TGI_FINISH_REASONS = "length | eos_token | stop_sequence | timeout | abort"


class TGIToken(ResponseModel):
    id: int
    text: str
    logprob: float | None
    special: bool


class PrefillToken(ResponseModel):
    id: int
    text: str
    logprob: float | None = Field(description="null for the first token, which nothing predicts")


class GenerateDetails(ResponseModel):
    finish_reason: str = Field(description=TGI_FINISH_REASONS)
    generated_tokens: int
    input_length: int
    seed: int | None
    prefill: list[PrefillToken] = Field(description="Empty unless decoder_input_details")
    tokens: list[TGIToken]
    top_tokens: list[list[TGIToken]] | None = omitted_if_none("With top_n_tokens only")
    timings: Timings | None = omitted_if_none("Non-standard")


class GenerateResponse(ResponseModel):
    generated_text: str
    details: GenerateDetails | None = omitted_if_none("With details only")


class StreamDetails(ResponseModel):
    finish_reason: str = Field(description=TGI_FINISH_REASONS)
    generated_tokens: int
    input_length: int
    seed: int | None
    timings: Timings | None = omitted_if_none("Non-standard")


class StreamResponse(ResponseModel):
    """One event of /generate_stream: one token; the last also has generated_text and
    details (always, unlike TGI, which sends them only with details)."""

    index: int = Field(description="1, 2, ... per event")
    token: TGIToken
    top_tokens: list[TGIToken] | None = Field(description="With top_n_tokens only")
    generated_text: str | None
    details: StreamDetails | None


class Info(ResponseModel):
    model_id: str
    model_sha: str | None = None
    model_dtype: str
    model_device_type: str
    model_pipeline_tag: str | None = "text-generation"
    max_concurrent_requests: int
    max_best_of: int = 1
    max_stop_sequences: int
    max_input_tokens: int
    max_total_tokens: int
    max_client_batch_size: int = 1
    validation_workers: int = 1
    router: str = "gpt2-serve"
    version: str
    sha: str | None = None
    docker_label: str | None = None
