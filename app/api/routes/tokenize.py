"""POST /tokenize and POST /detokenize: the served model's tokenizer, for clients that count."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import EngineDep, SettingsDep
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
async def tokenize(
    body: TokenizeRequest, engine: EngineDep, settings: SettingsDep
) -> TokenizeResponse:
    check_model(body.model, settings)
    tokens = await engine.encode(body.prompt) if body.prompt else []
    return TokenizeResponse(
        tokens=tokens, count=len(tokens), max_model_len=engine.info.max_model_len
    )


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES)
async def detokenize(
    body: DetokenizeRequest, engine: EngineDep, settings: SettingsDep
) -> DetokenizeResponse:
    check_model(body.model, settings)
    check_token_ids("tokens", body.tokens, engine.info.vocab_size)
    return DetokenizeResponse(prompt=engine.decode(body.tokens, skip_special_tokens=False))
