"""POST /tokenize and POST /detokenize: the served model's tokenizer, for clients that count."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import engine_of, settings_of
from app.api.prompts import check_model
from app.api.schemas import (
    ERROR_RESPONSES,
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from app.engine.client.validation import check_token_ids

router = APIRouter(tags=["Tokenizer"])


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    engine = engine_of(request)
    check_model(body.model, settings_of(request))
    tokens = await engine.encode(body.prompt) if body.prompt else []
    return TokenizeResponse(
        tokens=tokens, count=len(tokens), max_model_len=engine.info.max_model_len
    )


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES)
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    engine = engine_of(request)
    check_model(body.model, settings_of(request))
    check_token_ids("tokens", body.tokens, engine.info.vocab_size)
    return DetokenizeResponse(prompt=engine.decode(body.tokens, skip_special_tokens=False))
