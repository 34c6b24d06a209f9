"""GET /v1/models (OpenAI) and GET /info (TGI): what is served, and its limits."""

from __future__ import annotations

from importlib import metadata

from fastapi import APIRouter, Request

from app.api.deps import engine_of, settings_of
from app.api.schemas import Info, ModelCard, ModelList
from app.api.schemas.common import MAX_STOP_SEQUENCES

router = APIRouter()


def server_version() -> str:
    try:
        return metadata.version("gpt2-serve")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0+local"


@router.get("/v1/models", tags=["OpenAI"], response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    engine, settings = engine_of(request), settings_of(request)
    card = ModelCard(
        id=settings.model_name,
        created=request.app.state.started_at,
        root=settings.model_name,  # the served name, never the path on this machine
        max_model_len=engine.info.max_model_len,
    )
    return ModelList(data=[card])


@router.get("/info", tags=["TGI"], response_model=Info)
async def info(request: Request) -> Info:
    settings = settings_of(request)
    model = engine_of(request).info
    return Info(
        model_id=settings.model_name,
        model_dtype=model.dtype,
        model_device_type=model.device.split(":")[0],
        max_concurrent_requests=settings.max_queued_requests + model.max_num_seqs,
        max_stop_sequences=MAX_STOP_SEQUENCES,
        # TGI's terms: input tokens leave room for at least one generated token.
        max_input_tokens=model.max_model_len - 1,
        max_total_tokens=model.max_model_len,
        version=server_version(),
    )
