"""Request and response models: OpenAI shapes, TGI shapes, and the shared pieces."""

from app.api.schemas.common import ERROR_RESPONSES, ErrorResponse, StrictModel, Timings
from app.api.schemas.misc import (
    DetokenizeRequest,
    DetokenizeResponse,
    HealthResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from app.api.schemas.openai import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    SamplingFields,
)
from app.api.schemas.tgi import GenerateParameters, GenerateRequest, GenerateResponse, Info

__all__ = [
    "ERROR_RESPONSES",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatMessage",
    "CompletionRequest",
    "CompletionResponse",
    "DetokenizeRequest",
    "DetokenizeResponse",
    "ErrorResponse",
    "GenerateParameters",
    "GenerateRequest",
    "GenerateResponse",
    "HealthResponse",
    "Info",
    "ModelCard",
    "ModelList",
    "SamplingFields",
    "StrictModel",
    "Timings",
    "TokenizeRequest",
    "TokenizeResponse",
]
