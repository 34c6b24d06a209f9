"""Tokenizer and probe shapes."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.api.schemas.common import RequestBody, TokenId


class TokenizeRequest(RequestBody):
    prompt: str
    model: str | None = None


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(RequestBody):
    tokens: list[TokenId] = Field(max_length=100_000)
    model: str | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


class HealthResponse(BaseModel):
    status: str
